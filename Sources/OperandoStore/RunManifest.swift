import Foundation
import OperandoCore

/// `run.json` in every run directory: what the run is, where it came from, and how it ended.
/// Rewritten atomically (temporary file, fsync, rename) at start and at stop.
public struct RunManifest: Codable, Sendable {
    public enum State: String, Codable, Sendable {
        /// Being written now (or the daemon died while writing it: recovery closes it).
        case recording
        /// Stopped and drained cleanly.
        case complete
        /// Stopped because writing failed (see `stopReason`); what was written is intact.
        case failed
        /// Closed after the daemon died while recording (kill, crash, power loss): torn tails
        /// were cut, counts rebuilt from the segments (see `recovery`).
        case recovered
    }

    public static let formatName = "operandod-run/1"

    public var format: String = RunManifest.formatName
    public var id: String
    public var name: String
    public var state: State
    /// Experiment metadata (`MetadataSchema`), as given at run start.
    public var metadata: [String: JSONValue]
    public var startedAt: String
    public var startAnchor: RealtimeAnchor
    public var stoppedAt: String?
    public var stopAnchor: RealtimeAnchor?
    public var startReason: String
    public var stopReason: String?
    public var streams: [StreamDescriptor]
    public var provenance: Provenance
    /// How much may be lost on power failure, in words.
    public var durability: String
    public var segments: Int
    public var summary: [StreamCounts]?
    /// Times the disk refused writes and the run paused (policy `pause`).
    public var interruptions: [WriteInterruption]?
    /// What recovery found and did, for a recovered run.
    public var recovery: RecoveryReport?

    public init(
        id: String, name: String, metadata: [String: JSONValue], startAnchor: RealtimeAnchor, startReason: String,
        streams: [StreamDescriptor], provenance: Provenance, durability: String
    ) {
        self.id = id
        self.name = name
        self.state = .recording
        self.metadata = metadata
        self.startedAt = Self.iso8601(startAnchor.utcNanoseconds)
        self.startAnchor = startAnchor
        self.startReason = startReason
        self.streams = streams
        self.provenance = provenance
        self.durability = durability
        self.segments = 0
    }

    public static func iso8601(_ utcNanoseconds: Int64) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date(timeIntervalSince1970: Double(utcNanoseconds) / 1e9))
    }

    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return Array(try e.encode(self)) + [0x0A]
    }

    public static func load(_ path: String) throws -> RunManifest {
        try JSONDecoder().decode(RunManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }
}

/// A stretch of a run during which the disk refused writes.
public struct WriteInterruption: Codable, Sendable, Equatable {
    public var from: HostInstant
    public var to: HostInstant
    public var error: String
    /// Records that arrived meanwhile (counted as dropped in the summary).
    public var lostRecords: UInt64

    public init(from: HostInstant, to: HostInstant, error: String, lostRecords: UInt64) {
        self.from = from
        self.to = to
        self.error = error
        self.lostRecords = lostRecords
    }
}

/// What recovering a run found and did.
public struct RecoveryReport: Codable, Sendable, Equatable {
    public struct Damage: Codable, Sendable, Equatable {
        public var segment: String
        public var offset: Int
        public var length: Int
    }

    /// When (UTC, ISO 8601) and by whom ("daemon start", "operandoctl recover").
    public var recoveredAt: String
    public var by: String
    /// Bytes cut off torn segment tails, per segment file name.
    public var tornBytesRemoved: [String: Int]
    /// Damaged regions inside segments, skipped (their records count as dropped).
    public var damaged: [Damage]
    /// Valid records found.
    public var records: Int
    /// Segments that could not be read at all (bad header), with why.
    public var unreadableSegments: [String: String]
}

/// Where a run came from: enough to reproduce its setup and to trust its data.
public struct Provenance: Codable, Sendable {
    public var daemonVersion: String
    public var hostName: String
    public var configPath: String
    /// The configuration file exactly as loaded.
    public var configText: String
    public var devices: [DeviceProvenance]
    public var libraries: [String: String]

    public init(daemonVersion: String, hostName: String, configPath: String, configText: String, devices: [DeviceProvenance], libraries: [String: String]) {
        self.daemonVersion = daemonVersion
        self.hostName = hostName
        self.configPath = configPath
        self.configText = configText
        self.devices = devices
        self.libraries = libraries
    }
}

public struct DeviceProvenance: Codable, Sendable {
    public var name: String
    public var driver: String
    public var driverVersion: String
    public var transport: String
    public var identity: DeviceIdentity?
    /// Resolution of the device's timestamps, ns (its clock model adds it to every uncertainty).
    public var clockResolutionNs: Double?
    /// The most the constant one-way delay of its stamps can be, ns (one-way clock model).
    public var oneWayLatencyMaxNs: Int64?

    public init(
        name: String, driver: String, driverVersion: String, transport: String, identity: DeviceIdentity?, clockResolutionNs: Double? = nil,
        oneWayLatencyMaxNs: Int64? = nil
    ) {
        self.name = name
        self.driver = driver
        self.driverVersion = driverVersion
        self.transport = transport
        self.identity = identity
        self.clockResolutionNs = clockResolutionNs
        self.oneWayLatencyMaxNs = oneWayLatencyMaxNs
    }
}
