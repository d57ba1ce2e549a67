import Logging
import OperandoBuffers
import OperandoCore
import OperandoIO
import OperandoVirtualCell
import Synchronization

/// Runs one device on its own thread: open, set up, acquire; on any failure record a
/// disconnect, retry with backoff, replay setup, and record the gap once data flows again.
/// Never lets a device take the daemon down.
final class DeviceRunner: @unchecked Sendable {
    enum State: String, Sendable {
        case connecting, connected, disconnected, stopped
    }

    struct Snapshot: Sendable {
        var state: State
        var identity: DeviceIdentity?
        var reconnects: Int
        var lastError: String?
    }

    let config: DeviceConfig
    let driver: any Instrument
    let sink: ChannelSink
    private let link: DeviceLink
    /// Present for `simulated` devices: the in-memory cable, which tests can unplug.
    let simulatedLink: InMemoryLink?
    private let cell: VirtualCell
    private let clock: any HostClock
    private let logger: Logger
    private let reconnectMax: Duration
    private let stopping = Atomic<Bool>(false)
    private let snapshotLock: Mutex<Snapshot>
    /// Commands from the control socket, carried out on the device thread between acquisitions.
    private let mailbox = Mutex<[(DeviceCommand, Completion<Result<[String: EventValue], any Error>>)]>([])
    private var thread: IOThread?
    private var simulatorThread: IOThread?

    init(config: DeviceConfig, driver: any Instrument, sink: ChannelSink, cell: VirtualCell, clock: any HostClock, reconnectMax: Duration, logger: Logger) {
        self.config = config
        self.driver = driver
        self.sink = sink
        self.cell = cell
        self.clock = clock
        self.reconnectMax = reconnectMax
        var logger = logger
        logger[metadataKey: "device"] = "\(config.name)"
        self.logger = logger
        snapshotLock = Mutex(Snapshot(state: .connecting, identity: nil, reconnects: 0, lastError: nil))
        switch config.transport {
        case .simulated:
            let l = InMemoryLink(clock: clock)
            simulatedLink = l
            link = type(of: driver).linkKind == .packets ? .packets(l.hostPackets) : .byteStream(l.hostByteStream)
        case .tcp(let host, let port):
            simulatedLink = nil
            link = .byteStream(TCPByteStream(host: host, port: port, clock: clock))
        case .serial(let match):
            simulatedLink = nil
            link = .byteStream(SerialPortTransport(match: match, settings: config.serial, clock: clock))
        case .usb(let match):
            simulatedLink = nil
            link = .packets(USBBulkTransport(match: match, clock: clock))
        }
    }

    var snapshot: Snapshot { snapshotLock.withLock { $0 } }

    /// Runs `command` on the device thread and waits for its result (call from a control
    /// connection's thread). Refused at once when the device is not connected.
    func perform(_ command: DeviceCommand) throws -> [String: EventValue] {
        guard snapshot.state == .connected else {
            throw InstrumentError(.disconnected, device: config.name, "\(config.name) is \(snapshot.state.rawValue); `operandoctl devices` shows why")
        }
        let done = Completion<Result<[String: EventValue], any Error>>()
        mailbox.withLock { $0.append((command, done)) }
        return try done.wait().get()
    }

    private func takeCommands() -> [(DeviceCommand, Completion<Result<[String: EventValue], any Error>>)] {
        mailbox.withLock { m in defer { m.removeAll() }; return m }
    }

    private func runCommands() {
        for (command, done) in takeCommands() {
            do {
                done.fulfil(.success(try isSerialTrigger(command) ? trigger(command) : driver.perform(command, link: link, sink: sink)))
            } catch {
                done.fulfil(.failure(error))
            }
        }
    }

    /// A `trigger` on DTR or RTS is the port's business; one on another line (a GPIO pin) is the driver's.
    private func isSerialTrigger(_ command: DeviceCommand) -> Bool {
        guard command.name == "trigger", case .string(let line)? = command.arguments["line"] else { return false }
        return ModemLine(rawValue: line) != nil
    }

    /// `trigger`: edges on the serial port's DTR or RTS line, each recorded as a stimulus at the
    /// middle of the bracket around the driver call, with half the bracket as uncertainty.
    /// Arguments: `line` ("dtr"/"rts"), then either `asserted` (Bool: one edge) or
    /// `pulse_ms` (assert, hold, release).
    private func trigger(_ command: DeviceCommand) throws -> [String: EventValue] {
        guard case .byteStream(let port) = link, let lines = port as? any ModemLineControl else {
            throw InstrumentError(.unsupported, device: config.name, "\(config.name) is not on a serial port (\(link.endpoint)); DTR/RTS trigger outputs need one")
        }
        guard case .string(let name)? = command.arguments["line"], let line = ModemLine(rawValue: name) else {
            throw InstrumentError(.rejected, device: config.name, "trigger needs line = \"dtr\" or \"rts\"")
        }
        var edges: [EventValue] = []
        func edge(_ asserted: Bool) throws {
            let before = clock.now()
            try lines.setModemLine(line, asserted: asserted)
            let at = HostInstant.bracketMidpoint(sent: before, received: clock.now())
            let what = asserted ? "asserted" : "released"
            sink.event(Event(
                kind: .stimulus, source: config.name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs,
                message: "trigger: \(line) \(what)", values: ["line": .string(line.rawValue), "edge": .string(what), "command": .string("trigger")]))
            edges.append(.integer(at.instant.nanoseconds))
        }
        if case .bool(let asserted)? = command.arguments["asserted"] {
            try edge(asserted)
        } else {
            let ms = command.arguments["pulse_ms"]?.doubleValue ?? 10
            guard ms >= 0.1 && ms <= 10_000 else {
                throw InstrumentError(.rejected, device: config.name, "pulse_ms = \(ms) is outside 0.1…10000")
            }
            try edge(true)
            ThreadSleep.sleep(.nanoseconds(Int64(ms * 1e6)))
            try edge(false)
        }
        return ["line": .string(line.rawValue), "edges": .integer(Int64(edges.count)), "first_edge_ns": edges[0]]
    }

    private func refuseCommands(_ why: String) {
        for (command, done) in takeCommands() {
            done.fulfil(.failure(InstrumentError(.disconnected, device: command.device, why)))
        }
    }
    private var isStopping: Bool { stopping.load(ordering: .relaxed) }

    func start() {
        if let simulated = simulatedLink {
            let driverName = config.driver
            let name = config.name
            let cell = cell
            let clock = clock
            let deviceClock = config.simulatedClock
            simulatorThread = IOThread(name: "sim-\(name)") { [self] in
                // The simulator serves until the link is unplugged; then waits for a replug.
                while !isStopping {
                    if simulated.isPlugged {
                        DriverRegistry.serveSimulator(driverName, name: name, link: simulated, cell: cell, clock: clock, deviceClock: deviceClock, shouldStop: { self.isStopping || !simulated.isPlugged })
                    } else {
                        ThreadSleep.sleep(.milliseconds(20))
                    }
                }
            }
        }
        thread = IOThread(name: "dev-\(config.name)") { [self] in run() }
    }

    func stop() {
        stopping.store(true, ordering: .relaxed)
        thread?.join()
        simulatorThread?.join()
        for c in sink.allChannels { c.close() }
    }

    private func update(_ body: (inout Snapshot) -> Void) { snapshotLock.withLock { body(&$0) } }

    private func run() {
        var backoff: Duration = .milliseconds(100)
        var lostAt: HostInstant?
        while !stopping.load(ordering: .relaxed) {
            update { $0.state = .connecting }
            do {
                try link.open()
                let identity = try driver.setup(link: link, sink: sink)
                let now = clock.now()
                if let lostAt {
                    sink.event(Event(kind: .gap, source: config.name, hostTime: lostAt, endTime: now, message: "no data from \(config.name) while it was disconnected (\(String(format: "%.3f", now.seconds(since: lostAt))) s)"))
                }
                lostAt = nil
                let notes = link.openNotes
                sink.event(Event(kind: .stateChange, source: config.name, hostTime: now,
                                 message: "connected: \(identity.model) serial \(identity.serialNumber) firmware \(identity.firmware) via \(link.endpoint)" + (notes.isEmpty ? "" : "; " + notes.joined(separator: "; ")),
                                 values: ["state": .string("connected"), "serial": .string(identity.serialNumber), "endpoint": .string(link.endpoint)]))
                for note in notes { logger.info("\(note)") }
                update { $0.state = .connected; $0.identity = identity; $0.lastError = nil }
                logger.info("connected to \(identity.model) serial \(identity.serialNumber) firmware \(identity.firmware) via \(link.endpoint)")
                backoff = .milliseconds(100)
                while !stopping.load(ordering: .relaxed) {
                    runCommands()
                    try driver.acquire(link: link, sink: sink, budget: .milliseconds(50))
                }
                driver.shutdown(link: link)
                link.close()
            } catch {
                link.close()
                let now = clock.now()
                let wasConnected = snapshot.state == .connected
                if wasConnected {
                    lostAt = now
                    sink.event(Event(kind: .stateChange, source: config.name, hostTime: now, message: "disconnected: \(error)", values: ["state": .string("disconnected")]))
                    logger.warning("lost \(config.name): \(error); reconnecting, the run continues")
                } else {
                    logger.warning("cannot reach \(config.name) via \(link.endpoint): \(error); retrying in \(backoff)")
                }
                refuseCommands("\(config.name) went away: \(error)")
                update { s in
                    s.state = .disconnected
                    s.lastError = "\(error)"
                    if wasConnected { s.reconnects += 1 }
                }
                // Wait, in slices so that stop stays prompt.
                let until = now.advanced(byNanoseconds: backoff.nanoseconds)
                while !stopping.load(ordering: .relaxed) && clock.now() < until { ThreadSleep.sleep(.milliseconds(20)) }
                backoff = min(backoff * 2, reconnectMax)
            }
        }
        update { $0.state = .stopped }
        refuseCommands("the daemon is stopping")
    }
}
