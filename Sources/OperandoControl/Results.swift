import OperandoCore

/// Typed results of the control commands, shared by the daemon and `operandoctl`.

public struct StreamStatusInfo: Codable, Sendable {
    public var name: String
    public var produced: UInt64
    public var written: UInt64
    public var dropped: UInt64
    /// Records per second over the last few seconds.
    public var ratePerSecond: Double
    /// 0…1.
    public var ringFill: Double
    public var ringBytes: Int
    public var policy: String
    /// Times the device thread waited for ring room under `block`: the disk is not keeping up.
    public var blockedWaits: UInt64

    public init(name: String, produced: UInt64, written: UInt64, dropped: UInt64, ratePerSecond: Double, ringFill: Double, ringBytes: Int, policy: String, blockedWaits: UInt64) {
        self.name = name
        self.produced = produced
        self.written = written
        self.dropped = dropped
        self.ratePerSecond = ratePerSecond
        self.ringFill = ringFill
        self.ringBytes = ringBytes
        self.policy = policy
        self.blockedWaits = blockedWaits
    }
}

public struct RunInfo: Codable, Sendable {
    public var name: String
    public var id: String
    public var directory: String
    public var state: String
    public var startedAt: String
    public var stoppedAt: String?
    public var elapsedSeconds: Double?
    /// `run.start` only: the expected data rate of all streams (from their nominal rates and
    /// record sizes), the free space, how long it lasts, and warnings (e.g. too little space).
    public var estimatedBytesPerSecond: Double?
    public var freeBytes: Int?
    public var hoursOfSpace: Double?
    public var warnings: [String]?

    public init(name: String, id: String, directory: String, state: String, startedAt: String, stoppedAt: String?, elapsedSeconds: Double?) {
        self.name = name
        self.id = id
        self.directory = directory
        self.state = state
        self.startedAt = startedAt
        self.stoppedAt = stoppedAt
        self.elapsedSeconds = elapsedSeconds
    }
}

public struct StatusResult: Codable, Sendable {
    public var daemonVersion: String
    public var protocolVersion: Int
    public var pid: Int32
    public var uptimeSeconds: Double
    public var hostTimeNanoseconds: Int64
    /// "idle", "recording", or "paused" (a run whose writes failed, waiting for room).
    public var state: String
    public var run: RunInfo?
    public var dataDirectory: String
    public var durability: String
    public var writeError: String?
    public var bytesWritten: UInt64
    public var memoryBudgetBytes: Int
    public var memoryUsedBytes: Int
    public var devicesConnected: Int
    public var devicesTotal: Int
    public var streams: [StreamStatusInfo]
    /// While a run is paused by a write error: since when, why, and what resumes it.
    public var paused: String?
    /// Free bytes in the data directory's file system.
    public var freeBytes: Int?
    /// Per device that reports it: what it is doing (technique, step, cycle, E, I, …).
    public var activities: [String: [String: JSONValue]]?

    public init(
        daemonVersion: String, protocolVersion: Int, pid: Int32, uptimeSeconds: Double, hostTimeNanoseconds: Int64, state: String, run: RunInfo?,
        dataDirectory: String, durability: String, writeError: String?, bytesWritten: UInt64, memoryBudgetBytes: Int, memoryUsedBytes: Int,
        devicesConnected: Int, devicesTotal: Int, streams: [StreamStatusInfo], paused: String? = nil, freeBytes: Int? = nil,
        activities: [String: [String: JSONValue]]? = nil
    ) {
        self.activities = activities
        self.daemonVersion = daemonVersion
        self.protocolVersion = protocolVersion
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.hostTimeNanoseconds = hostTimeNanoseconds
        self.state = state
        self.run = run
        self.dataDirectory = dataDirectory
        self.durability = durability
        self.writeError = writeError
        self.bytesWritten = bytesWritten
        self.memoryBudgetBytes = memoryBudgetBytes
        self.memoryUsedBytes = memoryUsedBytes
        self.devicesConnected = devicesConnected
        self.devicesTotal = devicesTotal
        self.streams = streams
        self.paused = paused
        self.freeBytes = freeBytes
    }
}

public struct DeviceInfo: Codable, Sendable {
    public var name: String
    public var driver: String
    public var transport: String
    /// "connecting", "connected", "disconnected", "stopped".
    public var state: String
    public var model: String?
    public var serialNumber: String?
    public var firmware: String?
    public var reconnects: Int
    public var lastError: String?
    public var streams: [String]
    /// The device's clock domain as the live model sees it.
    public var clock: DeviceClockInfo?

    public init(
        name: String, driver: String, transport: String, state: String, model: String?, serialNumber: String?, firmware: String?, reconnects: Int, lastError: String?,
        streams: [String], clock: DeviceClockInfo? = nil
    ) {
        self.name = name
        self.driver = driver
        self.transport = transport
        self.state = state
        self.model = model
        self.serialNumber = serialNumber
        self.firmware = firmware
        self.reconnects = reconnects
        self.lastError = lastError
        self.streams = streams
        self.clock = clock
    }
}

/// A device's clock model, live.
public struct DeviceClockInfo: Codable, Sendable, Equatable {
    /// "bracketed" (the host queries the device clock), "one-way" (the device stamps what it
    /// sends), "host-stamped" (no device clock; the transport's latency spread is the
    /// uncertainty), or "none" (nothing observed yet).
    public var model: String
    /// Observations fed to the model (exchanges, stamps or round trips).
    public var observations: UInt64
    /// Segments so far: 1 + resets + rate changes.
    public var segments: Int
    /// host − device at the latest observation, ns (device-clock models only).
    public var offsetNs: Double?
    /// Rate of the device clock relative to the host, ppm: positive when it runs fast
    /// (device-clock models only).
    public var driftPPM: Double?
    /// Uncertainty of a timestamp mapped now, ns.
    public var uncertaintyNs: Int64?

    public init(model: String, observations: UInt64, segments: Int, offsetNs: Double?, driftPPM: Double?, uncertaintyNs: Int64?) {
        self.model = model
        self.observations = observations
        self.segments = segments
        self.offsetNs = offsetNs
        self.driftPPM = driftPPM
        self.uncertaintyNs = uncertaintyNs
    }
}

public struct RunStopResult: Codable, Sendable {
    public var run: RunInfo
    public var stopReason: String
    public var streams: [StreamCounts]

    public init(run: RunInfo, stopReason: String, streams: [StreamCounts]) {
        self.run = run
        self.stopReason = stopReason
        self.streams = streams
    }
}

public struct RunListEntry: Codable, Sendable {
    public var run: RunInfo
    public var records: UInt64?
    public var bytes: UInt64?
    public var dropped: UInt64?

    public init(run: RunInfo, records: UInt64?, bytes: UInt64?, dropped: UInt64?) {
        self.run = run
        self.records = records
        self.bytes = bytes
        self.dropped = dropped
    }
}

public struct MarkResult: Codable, Sendable {
    public var hostTimeNanoseconds: Int64
    public init(hostTimeNanoseconds: Int64) { self.hostTimeNanoseconds = hostTimeNanoseconds }
}

public struct TailEntry: Codable, Sendable {
    public var sequence: UInt64
    public var hostTimeNanoseconds: Int64
    public var deviceTimeNanoseconds: Int64?
    /// For sample streams: the values of the newest sample; for frames: the first values and a summary.
    public var values: [Double]?
    /// For event streams: the event as JSON.
    public var event: JSONValue?
    public var payloadBytes: Int

    public init(sequence: UInt64, hostTimeNanoseconds: Int64, deviceTimeNanoseconds: Int64?, values: [Double]?, event: JSONValue?, payloadBytes: Int) {
        self.sequence = sequence
        self.hostTimeNanoseconds = hostTimeNanoseconds
        self.deviceTimeNanoseconds = deviceTimeNanoseconds
        self.values = values
        self.event = event
        self.payloadBytes = payloadBytes
    }
}

public struct TailResult: Codable, Sendable {
    public var stream: String
    public var kind: String
    /// Column names with units, e.g. "E (V)".
    public var columns: [String]
    public var entries: [TailEntry]
    /// Pass as `after` to get only newer entries.
    public var next: UInt64?

    public init(stream: String, kind: String, columns: [String], entries: [TailEntry], next: UInt64?) {
        self.stream = stream
        self.kind = kind
        self.columns = columns
        self.entries = entries
        self.next = next
    }
}

public struct PortEntry: Codable, Sendable {
    public var port: SerialPortInfo
    /// The configured device whose transport names this port, if any.
    public var device: String?
    /// What the port's USB identity suggests it is.
    public var recognisedAs: String?

    public init(port: SerialPortInfo, device: String?, recognisedAs: String?) {
        self.port = port
        self.device = device
        self.recognisedAs = recognisedAs
    }
}

public struct DeviceCommandResult: Codable, Sendable {
    public var device: String
    public var command: String
    public var values: [String: JSONValue]

    public init(device: String, command: String, values: [String: JSONValue]) {
        self.device = device
        self.command = command
        self.values = values
    }
}
