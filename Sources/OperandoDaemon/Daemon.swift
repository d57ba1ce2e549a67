import Foundation
import Logging
import OperandoBuffers
import OperandoControl
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoSync
import OperandoTimeline
import OperandoVirtualCell
import Synchronization

/// The daemon: devices, rings, the writer, and the control commands that tie them together.
/// Executables only wire this up (see `services()`).
public final class Daemon: @unchecked Sendable {
    public static let version = "0.1.0"

    public let config: DaemonConfig
    public let socketPath: String
    public let dataDirectory: String
    let clock: any HostClock
    let logger: Logger
    let budget: MemoryBudget
    let daemonEvents: DaemonEvents
    let runners: [DeviceRunner]
    /// Every stream's channel, indexed by stream id.
    let channels: [StreamChannel]
    let recorder: Recorder
    let notifier: SystemdNotifier
    let cell: VirtualCell
    let started: HostInstant
    private let rates = Mutex<(at: HostInstant, produced: [UInt64], rates: [Double])?>(nil)

    public init(config: DaemonConfig, socketPath: String?, dataDirectory: String?, environment: [String: String], logger: Logger, clock: any HostClock = MonotonicRawClock()) throws {
        self.config = config
        self.socketPath = socketPath ?? config.socketPath
        self.dataDirectory = dataDirectory ?? config.dataDirectory
        self.clock = clock
        self.logger = logger
        notifier = SystemdNotifier(environment: environment)
        started = clock.now()
        let budget = MemoryBudget(limitBytes: config.memoryBudgetBytes)
        self.budget = budget
        let configPath = config.path
        var params = VirtualCell.Parameters()
        params.timeScale = config.timeScale
        params.initialStateOfCharge = config.initialStateOfCharge
        let cell = VirtualCell(params)
        self.cell = cell

        var channels: [StreamChannel] = []
        func makeChannel(_ descriptor: StreamDescriptor, ringBytes: Int, policy: OverflowPolicy) throws -> StreamChannel {
            var d = descriptor
            d.id = UInt32(channels.count)
            let needed = 4 * RecordLayout.recordSize(payloadBytes: d.maxPayloadBytes)
            guard ringBytes >= needed else {
                throw ConfigErrors([ConfigError(file: configPath, line: nil, key: "ring_mb", message: "the ring for \(d.name) (\(ringBytes) bytes) cannot hold 4 of its \(d.maxPayloadBytes)-byte records; raise ring_mb")])
            }
            try budget.reserve(ringBytes)
            let channel = StreamChannel(descriptor: d, ringBytes: ringBytes, policy: policy, backoff: ThreadSleep.ringBackoff, checksum: CRC32C.function)
            channels.append(channel)
            return channel
        }
        let eventRing = min(config.defaultRingBytes, 4 << 20)
        let daemonEvents = DaemonEvents(channel: try makeChannel(.events(device: "daemon"), ringBytes: eventRing, policy: .block))
        var runners: [DeviceRunner] = []
        for device in config.devices {
            let driver = try DriverRegistry.makeDriver(device.driver, name: device.name, settings: device.settings)
            let ring = device.ringBytes ?? config.defaultRingBytes
            let streamChannels = try driver.streams.map { try makeChannel($0, ringBytes: ring, policy: device.overflow) }
            let events = try makeChannel(.events(device: device.name), ringBytes: min(ring, 4 << 20), policy: .block)
            let clockChannel = try makeChannel(.clock(device: device.name), ringBytes: min(ring, 1 << 20), policy: .block)
            let sink = ChannelSink(
                device: device.name, channels: streamChannels, events: events, clockChannel: clockChannel,
                clockParameters: DeviceClockParameters(
                    resolutionNs: type(of: driver).clockResolutionNs, oneWayLatencyMaxNs: device.clockLatencyMaxNs ?? type(of: driver).oneWayLatencyMaxNs),
                clock: clock)
            runners.append(DeviceRunner(config: device, driver: driver, sink: sink, cell: cell, clock: clock, reconnectMax: config.reconnectMax, logger: logger))
        }
        self.channels = channels
        self.runners = runners
        self.daemonEvents = daemonEvents
        recorder = Recorder(
            channels: channels, clock: clock, options: Self.recorderOptions(config), logger: logger,
            onEvent: { event in
                // Called on the writer thread, which drains the daemon's events ring: record from
                // another thread so the writer never waits on a ring it empties itself.
                _ = IOThread(name: "writer-event", detached: true) {
                    switch event {
                    case .paused(let run, let at, let error):
                        daemonEvents.record(Event(
                            kind: .alarm, source: "daemon", hostTime: at,
                            message: "writing run \(run) failed: \(error); recording is paused until the disk has room, data written before is intact",
                            values: ["write_error": .string(error), "state": .string("paused")]))
                    case .resumed(let run, let at, let pausedAt, let seconds, let lost, let error):
                        // (The alarm raised at the pause arrived while nothing could be written;
                        // this gap, written after the resume, is what the run keeps.)
                        daemonEvents.record(Event(
                            kind: .gap, source: "daemon", hostTime: pausedAt, endTime: at,
                            message: "run \(run) could not be written for \(String(format: "%.1f", seconds)) s (\(error)): \(lost) records lost, counted as dropped; recording resumed",
                            values: ["lost_records": .integer(Int64(lost)), "write_error": .string(error), "state": .string("resumed")]))
                    }
                }
            })
        try FileSystem.makeDirectories(self.dataDirectory + "/runs")
        logger.info("operandod \(Self.version): \(self.runners.count) device(s), \(channels.count) stream(s), \(budget.usedBytes >> 20) MiB of rings preallocated, data in \(self.dataDirectory)")
    }

    static func recorderOptions(_ config: DaemonConfig) -> Recorder.Options {
        Recorder.Options(
            syncInterval: config.syncInterval, segmentBytes: config.segmentBytes, segmentDuration: config.segmentDuration,
            onWriteError: config.onWriteError, resumeFreeBytes: config.resumeFreeBytes, anchorInterval: config.anchorInterval)
    }

    // MARK: Lifecycle pieces used by the services

    /// Closes the runs a previous daemon left recording (on a thread of its own: a long run takes
    /// a while to verify, and the daemon is usable meanwhile).
    func recoverUnfinishedRuns() {
        guard config.recoverOnStart else { return }
        let runs = RunRecovery.unfinishedRuns(in: dataDirectory)
        guard !runs.isEmpty else { return }
        _ = IOThread(name: "recovery", detached: true) { [self] in
            for dir in runs {
                do {
                    let m = try RunRecovery.recover(dir, by: "daemon start", at: clock.realtimeAnchor())
                    let r = m.recovery
                    let written = m.summary?.reduce(0) { $0 + $1.written } ?? 0
                    logger.notice("recovered run \(m.name) in \(dir): \(written) records kept, \(r?.tornBytesRemoved.values.reduce(0, +) ?? 0) torn bytes cut, \(r?.damaged.count ?? 0) damaged regions skipped")
                    _ = event(.stateChange, "run \(m.name) recovered after an unclean stop: \(written) records kept", values: ["run_id": .string(m.id), "state": .string("recovered")])
                } catch {
                    logger.error("could not recover the run in \(dir): \(error); `operandoctl recover` retries")
                }
            }
        }
    }

    func startDevices() { for r in runners { r.start() } }
    func stopDevices() { for r in runners { r.stop() } }

    func event(_ kind: Event.Kind, _ message: String, values: [String: EventValue] = [:]) -> HostInstant {
        let now = clock.now()
        daemonEvents.record(Event(kind: kind, source: "daemon", hostTime: now, message: message, values: values))
        return now
    }

    /// Stops the writer after closing any run, on a thread of its own (it may wait for the disk).
    func shutdownRecorder(reason: String) {
        let wasRecording = recorder.status.recording
        if wasRecording {
            _ = event(.stateChange, "run stopping: \(reason)")
        }
        recorder.shutdown(reason: reason)
        if wasRecording, let run = recorder.status.run, let summary = run.summary {
            logger.info("run \(run.name) closed at shutdown: \(summary.reduce(0) { $0 + $1.written }) records written, \(summary.reduce(0) { $0 + $1.dropped }) dropped")
        }
    }

    // MARK: Commands

    public func handle(_ request: ControlRequest, peer: PeerCredentials?) -> ControlReply {
        let args = request.args ?? [:]
        do {
            let result: JSONValue
            switch request.cmd {
            case "status": result = try JSONValue(encoding: status())
            case "devices": result = try JSONValue(encoding: devices())
            case "run.start": result = try JSONValue(encoding: startRun(args, peer: peer))
            case "run.stop": result = try JSONValue(encoding: stopRun(args))
            case "run.list": result = try JSONValue(encoding: listRuns())
            case "run.refit": result = try JSONValue(encoding: refit(args))
            case "run.align": result = try JSONValue(encoding: align(args))
            case "run.recover": result = try JSONValue(encoding: recover(args))
            case "mark": result = try JSONValue(encoding: mark(args, peer: peer))
            case "tail": result = try JSONValue(encoding: tail(args))
            case "sim.unplug", "sim.replug": result = try simulatedCable(args, plug: request.cmd == "sim.replug")
            case "ports": result = try JSONValue(encoding: ports())
            case "move", "home", "trigger", "scan", "bias", "setpoint", "tip", "technique", "abort": result = try JSONValue(encoding: deviceCommand(request.cmd, args))
            default:
                throw ControlError(.unknownCommand, "unknown command \"\(request.cmd)\"; commands: status, devices, ports, run.start, run.stop, run.list, run.refit, run.align, run.recover, mark, tail, move, home, trigger, scan, bias, setpoint, tip, technique, abort, sim.unplug, sim.replug")
            }
            return .success(id: request.id, result)
        } catch let error as ControlError {
            return .failure(id: request.id, error)
        } catch let error as InstrumentError {
            let code: ControlErrorCode = switch error.code {
            case .rejected, .unsupported: .badArguments
            case .disconnected, .notFound: .conflict
            default: .failed
            }
            return .failure(id: request.id, ControlError(code, "\(error)"))
        } catch let error as RecorderError {
            // Every recorder refusal is about the daemon's state (recording or not, name taken).
            return .failure(id: request.id, ControlError(.conflict, "\(error)"))
        } catch {
            logger.error("\(request.cmd) failed: \(error)")
            return .failure(id: request.id, ControlError(.failed, "\(request.cmd) failed: \(error)"))
        }
    }

    private func string(_ args: [String: JSONValue], _ key: String, required: Bool = true) throws -> String? {
        switch args[key] {
        case .string(let s)?: return s
        case nil, .null?:
            if required { throw ControlError(.badArguments, "missing \"\(key)\" (a string)") }
            return nil
        case let other?: throw ControlError(.badArguments, "\"\(key)\" must be a string, got \(other)")
        }
    }

    func status() -> StatusResult {
        let s = recorder.status
        let now = clock.now()
        let produced = channels.map(\.produced)
        let currentRates: [Double] = rates.withLock { r in
            if let prev = r, now.seconds(since: prev.at) < 1 { return prev.rates }
            let base = r?.produced ?? Array(repeating: 0, count: produced.count)
            let computed = zip(produced, base).map { Double($0 - $1) / max(1e-3, now.seconds(since: r?.at ?? started)) }
            r = (now, produced, computed)
            return computed
        }
        let streams = s.streams.enumerated().map { i, st in
            StreamStatusInfo(name: st.name, produced: st.produced, written: st.written, dropped: st.dropped, ratePerSecond: i < currentRates.count ? currentRates[i] : 0,
                             ringFill: st.ringFill, ringBytes: st.ringBytes, policy: st.policy, blockedWaits: st.blockedWaits)
        }
        let snapshots = runners.map(\.snapshot)
        return StatusResult(
            daemonVersion: Self.version, protocolVersion: ControlProtocol.version, pid: getpid(), uptimeSeconds: now.seconds(since: started), hostTimeNanoseconds: now.nanoseconds,
            state: s.paused != nil ? "paused" : s.recording ? "recording" : "idle", run: s.recording ? s.run.map { runInfo($0, directory: s.runDirectory ?? "", now: now) } : nil,
            dataDirectory: dataDirectory, durability: Recorder.Options(syncInterval: config.syncInterval).durabilityStatement, writeError: s.writeError,
            bytesWritten: s.bytesWritten, memoryBudgetBytes: budget.limitBytes, memoryUsedBytes: budget.usedBytes,
            devicesConnected: snapshots.filter { $0.state == .connected }.count, devicesTotal: runners.count, streams: streams, paused: s.paused,
            freeBytes: try? FileSystem.freeBytes(dataDirectory), activities: activities())
    }

    /// What the devices that report it are doing (a potentiostat's technique, step, cycle, E, I),
    /// asked on each device's thread; devices that are not connected are left out.
    func activities() -> [String: [String: JSONValue]]? {
        var out: [String: [String: JSONValue]] = [:]
        for r in runners where type(of: r.driver).reportsActivity && r.snapshot.state == .connected {
            if let values = try? r.perform(DeviceCommand(device: r.config.name, name: "status")), let json = try? values.mapValues({ try JSONValue(encoding: $0) }) {
                out[r.config.name] = json
            }
        }
        return out.isEmpty ? nil : out
    }

    private func runInfo(_ m: RunManifest, directory: String, now: HostInstant?) -> RunInfo {
        let elapsed: Double? = if let stop = m.stopAnchor { stop.host.seconds(since: m.startAnchor.host) } else { now.map { $0.seconds(since: m.startAnchor.host) } }
        return RunInfo(name: m.name, id: m.id, directory: directory, state: m.state.rawValue, startedAt: m.startedAt, stoppedAt: m.stoppedAt, elapsedSeconds: elapsed)
    }

    /// One line for systemd's STATUS=.
    func statusLine() -> String {
        let s = recorder.status
        let connected = runners.filter { $0.snapshot.state == .connected }.count
        let dropped = s.streams.reduce(0) { $0 + $1.dropped }
        var line = s.recording ? "recording \(s.run?.name ?? "?")" : "idle"
        line += ", \(connected)/\(runners.count) devices connected, \(s.bytesWritten >> 20) MiB written, \(dropped) dropped"
        if let e = s.writeError { line += ", WRITE ERROR: \(e)" + (s.paused != nil ? " (paused)" : "") }
        return line
    }

    func devices() -> [DeviceInfo] {
        runners.map { r in
            let s = r.snapshot
            return DeviceInfo(
                name: r.config.name, driver: r.config.driver, transport: r.config.transport.description, state: s.state.rawValue,
                model: s.identity?.model, serialNumber: s.identity?.serialNumber, firmware: s.identity?.firmware, reconnects: s.reconnects,
                lastError: s.lastError, streams: r.driver.streams.map(\.name) + ["\(r.config.name)/events", "\(r.config.name)/clock"], clock: r.sink.liveClock.info)
        }
    }

    private func provenance() -> Provenance {
        let host = ProcessInfo.processInfo.hostName
        return Provenance(
            daemonVersion: Self.version, hostName: host, configPath: config.path, configText: config.text,
            devices: runners.map { r in
                DeviceProvenance(name: r.config.name, driver: r.config.driver, driverVersion: type(of: r.driver).driverVersion, transport: r.config.transport.description, identity: r.snapshot.identity,
                                 clockResolutionNs: r.sink.clockParameters.resolutionNs, oneWayLatencyMaxNs: r.sink.clockParameters.oneWayLatencyMaxNs)
            },
            libraries: ["libserialport": SystemLibraries.libserialportVersion, "libusb": SystemLibraries.libusbVersion, "crc32c": CRC32C.isHardwareAccelerated ? "sse4.2" : "table"])
    }

    func startRun(_ args: [String: JSONValue], peer: PeerCredentials?) throws -> RunInfo {
        let name = try string(args, "name")!
        guard !name.isEmpty, name.count <= 100 else { throw ControlError(.badArguments, "\"name\" must be 1…100 characters") }
        // Experiment metadata: optional (unless require_metadata), but checked against the schema
        // when given; fields the schema does not know are kept.
        var metadata: [String: JSONValue] = [:]
        switch args["meta"] {
        case nil, .null?: break
        case .object(let o)?:
            metadata = o
        case let other?: throw ControlError(.badArguments, "\"meta\" must be an object (the experiment metadata, see `operandod --metadata-reference`), got \(other)")
        }
        if metadata.isEmpty {
            if config.requireMetadata {
                throw ControlError(.badArguments, "this daemon requires experiment metadata for every run (require_metadata); pass it with `operandoctl run start NAME --meta-file FILE` (fields: `operandod --metadata-reference`)")
            }
        } else {
            let problems = MetadataSchema.problems(.object(metadata))
            if !problems.isEmpty {
                throw ControlError(.badArguments, "the experiment metadata is incomplete or wrong: " + problems.joined(separator: "; ") + " (the schema: `operandod --metadata-reference`)")
            }
        }
        // Will the disk hold it? Expected rate × planned duration against free space.
        let planned: Double? = switch args["duration_s"] {
        case nil, .null?: nil
        case .number(let d)? where d > 0 && d.isFinite: d
        case let other?: throw ControlError(.badArguments, "\"duration_s\" (the planned duration) must be a positive number of seconds, got \(other)")
        }
        let force = args["force"] == .bool(true)
        let rate = expectedBytesPerSecond()
        let free = try? FileSystem.freeBytes(dataDirectory)
        var warnings: [String] = []
        if let free {
            let hours = Double(free) / rate / 3600
            if let planned, Double(free) < rate * planned {
                let message = "the planned \(Self.hours(planned / 3600)) need about \(Self.gib(rate * planned)) at \(Self.mib(rate))/s, but \(dataDirectory) has \(Self.gib(Double(free))) free (enough for \(Self.hours(hours)))"
                guard force else { throw ControlError(.conflict, message + "; free space, shorten the run, or start it anyway with force") }
                warnings.append(message + "; started anyway (force)")
            } else if let planned, Double(free) < 2 * rate * planned {
                warnings.append("less than twice the space the planned \(Self.hours(planned / 3600)) need: \(Self.gib(Double(free))) free for about \(Self.gib(rate * planned))")
            } else if planned == nil && hours < 24 {
                warnings.append("\(Self.gib(Double(free))) free in \(dataDirectory): about \(Self.hours(hours)) at the expected \(Self.mib(rate))/s")
            }
        }
        let anchor = clock.realtimeAnchor()
        let manifest = RunManifest(
            id: UUID().uuidString, name: name, metadata: metadata, startAnchor: anchor,
            startReason: "run.start from \(peer.map { "\($0)" } ?? "unknown peer")",
            streams: channels.map(\.descriptor), provenance: provenance(),
            durability: Recorder.Options(syncInterval: config.syncInterval).durabilityStatement)
        let directory = try recorder.startRun(manifest: manifest, under: dataDirectory)
        _ = event(.stateChange, "run \(name) started", values: ["run_id": .string(manifest.id)])
        logger.info("run \(name) started in \(directory)")
        notifier.notify("STATUS=recording run \(name)")
        for w in warnings { logger.warning("run \(name): \(w)") }
        var info = runInfo(manifest, directory: directory, now: clock.now())
        info.estimatedBytesPerSecond = rate
        info.freeBytes = free
        info.hoursOfSpace = free.map { Double($0) / rate / 3600 }
        info.warnings = warnings.isEmpty ? nil : warnings
        return info
    }

    /// What all streams write per second at their nominal rates: one record per nominal period
    /// at its largest size (events: a few hundred bytes a second).
    func expectedBytesPerSecond() -> Double {
        max(1, channels.reduce(0.0) { total, c in
            let d = c.descriptor
            if d.kind == .events { return total + 512 }
            return total + d.nominalRateHz * Double(RecordLayout.recordSize(payloadBytes: d.maxPayloadBytes))
        })
    }

    static func gib(_ bytes: Double) -> String { String(format: "%.2f GiB", bytes / Double(1 << 30)) }
    static func mib(_ bytes: Double) -> String { String(format: "%.2f MiB", bytes / Double(1 << 20)) }
    static func hours(_ h: Double) -> String { h >= 1 ? String(format: "%.1f h", h) : String(format: "%.0f min", h * 60) }

    /// `run.recover` (args: run, force): closes a run a previous daemon left recording.
    func recover(_ args: [String: JSONValue]) throws -> RunListEntry {
        let dir = try runDirectory(args)
        if recorder.status.recording, recorder.status.runDirectory == dir {
            throw ControlError(.conflict, "run \(dir) is the one recording now; stop it first")
        }
        do {
            let m = try RunRecovery.recover(dir, by: "operandoctl recover", at: clock.realtimeAnchor(), force: args["force"] == .bool(true))
            logger.notice("recovered run \(m.name) in \(dir)")
            return runListEntry(m, directory: dir)
        } catch let e as RunRecovery.Failure {
            throw ControlError(.conflict, e.description)
        }
    }

    func stopRun(_ args: [String: JSONValue]) throws -> RunStopResult {
        guard recorder.status.recording else { throw RecorderError.notRecording }
        let reason = try string(args, "reason", required: false) ?? "run.stop"
        let at = event(.stateChange, "run stopping: \(reason)")
        let done = Completion<Result<RunManifest, any Error>>()
        recorder.stopRun(at: at, reason: reason) { done.fulfil($0) }
        let manifest = try done.wait().get()
        let directory = recorder.status.runDirectory ?? ""
        notifier.notify("STATUS=idle")
        return RunStopResult(
            run: runInfo(manifest, directory: directory, now: nil), stopReason: reason,
            streams: manifest.summary ?? [])
    }

    func listRuns() throws -> [RunListEntry] {
        let root = dataDirectory + "/runs"
        let names = (try? FileSystem.list(root)) ?? []
        return names.compactMap { name in
            let dir = root + "/" + name
            guard let m = try? RunManifest.load(dir + "/run.json") else { return nil }
            return runListEntry(m, directory: dir)
        }
    }

    private func runListEntry(_ m: RunManifest, directory: String) -> RunListEntry {
        RunListEntry(
            run: runInfo(m, directory: directory, now: nil), records: m.summary.map { $0.reduce(0) { $0 + $1.written } },
            bytes: m.summary.map { $0.reduce(0) { $0 + $1.bytes } }, dropped: m.summary.map { $0.reduce(0) { $0 + $1.dropped } })
    }

    /// The directory of the run named by `args["run"]`: its directory name, its name, or its id.
    private func runDirectory(_ args: [String: JSONValue]) throws -> String {
        let wanted = try string(args, "run")!
        let root = dataDirectory + "/runs"
        let names = (try? FileSystem.list(root)) ?? []
        if names.contains(wanted), !wanted.contains("/"), wanted != "..", wanted != "." { return root + "/" + wanted }
        var byName: [String] = []
        for name in names.sorted() {
            guard let m = try? RunManifest.load(root + "/" + name + "/run.json") else { continue }
            if m.id == wanted { return root + "/" + name }
            if m.name == wanted { byName.append(name) }
        }
        if byName.count == 1 { return root + "/" + byName[0] }
        if byName.count > 1 {
            throw ControlError(.conflict, "\(byName.count) runs are named \"\(wanted)\" (\(byName.joined(separator: ", "))); give the directory name or the run id")
        }
        throw ControlError(.notFound, "no run \"\(wanted)\" in \(root); `operandoctl run list` shows the runs")
    }

    /// `run.refit` (args: run): refits every device clock of the run from its stored
    /// observations and writes `clock.json` into the run directory.
    func refit(_ args: [String: JSONValue]) throws -> RefitResult {
        let reader = try timelineRead { try RunReader(directory: try runDirectory(args)) }
        let clocks = try timelineRead { try RunClocks.fit(reader) }
        let file = try clocks.write(into: reader.directory)
        logger.info("refitted the clocks of run \(reader.manifest.name) into \(file)")
        return RefitResult(run: reader.manifest.name, file: file, devices: clocks.summary)
    }

    /// `run.align` (args: run, response, stimulus): the stimulus during every response.
    func align(_ args: [String: JSONValue]) throws -> AlignmentTable {
        let reader = try timelineRead { try RunReader(directory: try runDirectory(args)) }
        let response = try string(args, "response")!
        let stimulus = try string(args, "stimulus")!
        return try timelineRead { try Alignment.compute(reader, response: response, stimulus: stimulus) }
    }

    /// Turns the reader's and the aligner's refusals into control errors with their message.
    private func timelineRead<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let e as RunReader.Failure {
            throw ControlError(.notFound, e.description)
        } catch let e as Alignment.Failure {
            throw ControlError(.badArguments, e.description)
        } catch let e as SegmentReader.Failure {
            throw ControlError(.failed, "the run cannot be read: \(e)")
        }
    }

    func mark(_ args: [String: JSONValue], peer: PeerCredentials?) throws -> MarkResult {
        let text = try string(args, "text")!
        guard text.utf8.count <= 4096 else { throw ControlError(.badArguments, "a marker is at most 4096 bytes") }
        let at = event(.marker, text, values: peer.map { ["uid": .integer(Int64($0.uid)), "pid": .integer(Int64($0.pid))] } ?? [:])
        return MarkResult(hostTimeNanoseconds: at.nanoseconds)
    }

    func tail(_ args: [String: JSONValue]) throws -> TailResult {
        let name = try string(args, "stream")!
        guard let channel = channels.first(where: { $0.descriptor.name == name }) else {
            throw ControlError(.notFound, "no stream \"\(name)\"; streams: \(channels.map(\.descriptor.name).joined(separator: ", "))")
        }
        let after: UInt64? = switch args["after"] { case .number(let n)?: UInt64(max(0, n)); default: nil }
        let d = channel.descriptor
        let records = recorder.tail(stream: Int(d.id), after: after)
        let entries = records.map { r -> TailEntry in
            switch d.kind {
            case .events:
                let event = try? JSONDecoder().decode(JSONValue.self, from: Data(r.payload))
                return TailEntry(sequence: r.sequence, hostTimeNanoseconds: r.hostTime.nanoseconds, deviceTimeNanoseconds: r.deviceTime, values: nil, event: event, payloadBytes: r.payloadBytes)
            case .samples:
                // The newest sample of the record.
                let row = d.bytesPerItem
                let start = max(0, (r.payloadBytes / max(1, row) - 1) * row)
                let values = start + row <= r.payload.count ? d.elementType.values(r.payload[start..<(start + row)]) : []
                return TailEntry(sequence: r.sequence, hostTimeNanoseconds: r.hostTime.nanoseconds, deviceTimeNanoseconds: r.deviceTime, values: values, event: nil, payloadBytes: r.payloadBytes)
            case .frames:
                let values = d.elementType.values(r.payload[...])
                return TailEntry(sequence: r.sequence, hostTimeNanoseconds: r.hostTime.nanoseconds, deviceTimeNanoseconds: r.deviceTime, values: values, event: nil, payloadBytes: r.payloadBytes)
            }
        }
        return TailResult(stream: name, kind: d.kind.rawValue, columns: d.fields.map { "\($0.name) (\($0.unit))" }, entries: entries, next: records.last?.sequence ?? after)
    }

    /// Serial ports, then the USB devices a driver here recognises (reached through libusb;
    /// hubs, unknown devices and the USB side of serial bridges are left out).
    func ports() throws -> [PortEntry] {
        let serial = try SerialPorts.list().map { port in
            let device = runners.first { r in
                if case .serial(let m) = r.config.transport { return m.matches(port) }
                return false
            }?.config.name
            return PortEntry(port: port, device: device, recognisedAs: DriverRegistry.recognise(port))
        }
        let usb = try USBContext.shared().devices().compactMap { info -> PortEntry? in
            let port = info.asPort
            // A USB-serial bridge is already listed as its tty.
            let isBridge = serial.contains { $0.port.usbBus == info.bus && $0.port.usbAddress == info.address }
            guard info.deviceClass != 9, !isBridge, let recognised = DriverRegistry.recognise(port) else { return nil }
            let device = runners.first(where: { r in
                if case .usb(let m) = r.config.transport { return m.matches(info) }
                return false
            })?.config.name
            return PortEntry(port: port, device: device, recognisedAs: recognised)
        }
        return serial + usb
    }

    /// `move` (args: device, axis, position, unit "mm"/"um", relative), `home` (device, axis) and
    /// `trigger` (device, line "dtr"/"rts"/"gpioN", then `asserted` true/false or `pulse_ms`),
    /// `scan` (device, action start/stop/pause/resume, direction up/down), `bias` (device, volts),
    /// `setpoint` (device, value), `tip` (device, x_nm and y_nm, or neither to read).
    func deviceCommand(_ name: String, _ args: [String: JSONValue]) throws -> DeviceCommandResult {
        let device = try string(args, "device")!
        guard let runner = runners.first(where: { $0.config.name == device }) else {
            throw ControlError(.notFound, "no device \"\(device)\"; devices: \(runners.map(\.config.name).joined(separator: ", "))")
        }
        var arguments: [String: EventValue] = [:]
        switch args["axis"] {
        case nil, .null?: break
        case .number(let n)? where n == n.rounded() && n >= 0 && n < 100: arguments["axis"] = .integer(Int64(n))
        case let other?: throw ControlError(.badArguments, "\"axis\" must be a whole number 0…99 (0 = all), got \(other)")
        }
        if name == "move" {
            guard case .number(let position)? = args["position"], position.isFinite else {
                throw ControlError(.badArguments, "move needs \"position\" (a number)")
            }
            let unit = try string(args, "unit", required: false) ?? "mm"
            let scale: Double = switch unit {
            case "mm": 1000
            case "um", "µm": 1
            default: throw ControlError(.badArguments, "unit \"\(unit)\" is not a length unit I know; use mm or um")
            }
            arguments["position_um"] = .number(position * scale)
            if args["relative"] == .bool(true) { arguments["relative"] = .bool(true) }
        }
        if name == "trigger" {
            let line = try string(args, "line", required: false) ?? "dtr"
            guard ModemLine(rawValue: line) != nil || (line.hasPrefix("gpio") && Int(line.dropFirst(4)) != nil) else {
                throw ControlError(.badArguments, "\"line\" must be \"dtr\" or \"rts\" (the serial port's lines) or \"gpioN\" (the instrument's own outputs), got \"\(line)\"")
            }
            arguments["line"] = .string(line)
            switch args["asserted"] {
            case nil, .null?: break
            case .bool(let b)?: arguments["asserted"] = .bool(b)
            case let other?: throw ControlError(.badArguments, "\"asserted\" must be true or false, got \(other)")
            }
            switch args["pulse_ms"] {
            case nil, .null?: break
            case .number(let ms)? where ms >= 0.1 && ms <= 10_000: arguments["pulse_ms"] = .number(ms)
            case let other?: throw ControlError(.badArguments, "\"pulse_ms\" must be a number of milliseconds in 0.1…10000, got \(other)")
            }
        }
        switch name {
        case "scan":
            let action = try string(args, "action")!
            guard ["start", "stop", "pause", "resume"].contains(action) else {
                throw ControlError(.badArguments, "\"action\" must be start, stop, pause or resume, got \"\(action)\"")
            }
            arguments["action"] = .string(action)
            if let direction = try string(args, "direction", required: false) {
                guard direction == "up" || direction == "down" else { throw ControlError(.badArguments, "\"direction\" must be up or down, got \"\(direction)\"") }
                arguments["direction"] = .string(direction)
            }
        case "technique":
            // The technique or protocol as JSON text (`json`) or as an object (`technique`).
            switch (args["json"], args["technique"]) {
            case (.string(let text)?, nil): arguments["json"] = .string(text)
            case (nil, .object(let o)?):
                arguments["json"] = .string(String(decoding: try JSONEncoder().encode(JSONValue.object(o)), as: UTF8.self))
            default:
                throw ControlError(.badArguments, "technique needs \"technique\" (an object) or \"json\" (its JSON text), e.g. {\"kind\": \"cv\", …}")
            }
        case "tip":
            for key in ["x_nm", "y_nm"] {
                switch args[key] {
                case nil, .null?: break
                case .number(let v)? where v.isFinite: arguments[key] = .number(v)
                case let other?: throw ControlError(.badArguments, "\"\(key)\" must be a number of nm, got \(other)")
                }
            }
            guard (arguments["x_nm"] == nil) == (arguments["y_nm"] == nil) else { throw ControlError(.badArguments, "tip needs both x_nm and y_nm, or neither (to read)") }
        case "bias", "setpoint":
            let key = name == "bias" ? "volts" : "value"
            guard case .number(let v)? = args[key], v.isFinite else { throw ControlError(.badArguments, "\(name) needs \"\(key)\" (a number)") }
            arguments[key] = .number(v)
        default:
            break
        }
        let values = try runner.perform(DeviceCommand(device: device, name: name, arguments: arguments))
        logger.info("\(name) on \(device): \(values)")
        return DeviceCommandResult(device: device, command: name, values: try values.mapValues { try JSONValue(encoding: $0) })
    }

    private func simulatedCable(_ args: [String: JSONValue], plug: Bool) throws -> JSONValue {
        let name = try string(args, "device")!
        guard let runner = runners.first(where: { $0.config.name == name }) else { throw ControlError(.notFound, "no device \"\(name)\"") }
        guard let link = runner.simulatedLink else { throw ControlError(.badArguments, "\(name) is not simulated; only simulated cables can be pulled from software") }
        if plug { link.replug() } else { link.unplug() }
        logger.notice("simulated cable of \(name) \(plug ? "plugged in" : "pulled")")
        return .object(["device": .string(name), "plugged": .bool(plug)])
    }
}
