import OperandoCore

/// Driver for Zaber stages and controllers speaking the ASCII protocol (one device of a daisy
/// chain, one or more axes).
///
/// - Positions are recorded as measured: `get pos` and `get encoder.pos` at `poll_hz`, stamped at
///   the midpoint between sending the query and receiving the reply (half that round trip is the
///   stamp's uncertainty, recorded with each value change of the link as the `rtt_ns` of events).
/// - Every commanded move or home is a stimulus event; its end (an alert with comm.alert on, or a
///   poll that finds the axis idle) is a state-change event; warning flags that appear are alarms.
/// - Positions are µm, converted from microsteps with the device's `microstep_um` setting.
/// - Unlike the streaming drivers this is a query/response path at `poll_hz` (≤ 200 Hz): replies
///   are parsed into small strings, an allocation per reply that the rate makes harmless.
public final class ZaberStageDriver: Instrument, @unchecked Sendable {
    public static let driverName = "zaber-ascii"
    public static let driverVersion = "1.0.0"
    public static let linkKind = LinkKind.byteStream
    public static var serialDefaults: SerialSettings { SerialSettings(baudRate: 115_200) }

    public let name: String
    /// Address of the device in the chain (1…99).
    public let address: Int
    public let axes: Int
    public let pollPeriod: Int64
    /// Micrometres per microstep (device-specific: e.g. 0.047625 µm for X-LSM stages).
    public let microstepMicrometres: Double
    public let streams: [StreamDescriptor]

    private var assembler = ZaberLineAssembler()
    private var readBuffer = [UInt8](repeating: 0, count: 4096)
    private var lines: [(line: [UInt8], hostTime: HostInstant)] = []
    private var nextID = 1
    private var moving: [Bool]
    private var warning = "--"
    private var hasEncoder = true
    private var lastPoll = HostInstant(nanoseconds: 0)
    private var sample: [Double]
    /// Replies nobody was waiting for, lines that failed to parse.
    public private(set) var strayReplies = 0
    public private(set) var malformedLines = 0

    public init(name: String, settings: DeviceSettings) throws {
        self.name = name
        address = settings.int("device") ?? 1
        axes = settings.int("axes") ?? 1
        let pollHz = settings.double("poll_hz") ?? 10
        microstepMicrometres = settings.double("microstep_um") ?? 0.047625
        guard (1...99).contains(address) else { throw InstrumentError(.unsupported, device: name, "device = \(address) is outside 1…99") }
        guard (1...9).contains(axes) else { throw InstrumentError(.unsupported, device: name, "axes = \(axes) is outside 1…9") }
        guard (0.1...200).contains(pollHz) else { throw InstrumentError(.unsupported, device: name, "poll_hz = \(pollHz) is outside 0.1…200") }
        guard microstepMicrometres > 0 && microstepMicrometres < 1000 else {
            throw InstrumentError(.unsupported, device: name, "microstep_um = \(microstepMicrometres) must be a positive size in µm")
        }
        pollPeriod = Int64(1e9 / pollHz)
        moving = Array(repeating: false, count: axes + 1)
        sample = Array(repeating: 0, count: 2 * axes)
        streams = [
            StreamDescriptor(
                name: "\(name)/position", device: name, kind: .samples, elementType: .float64,
                fields: (1...axes).flatMap { [Field("pos\($0)", unit: "um"), Field("encoder\($0)", unit: "um")] },
                shape: [2 * axes], nominalRateHz: pollHz, maxPayloadBytes: 16 * axes)
        ]
    }

    // MARK: Instrument

    public func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity {
        let port = try byteStream(link)
        assembler.reset()
        lines.removeAll()
        moving = Array(repeating: false, count: axes + 1)
        let deviceID = try expectOK(request(port, sink, axis: 0, "get deviceid"), "get deviceid").data
        let version = try expectOK(request(port, sink, axis: 0, "get version"), "get version").data
        let serial = (try? expectOK(request(port, sink, axis: 0, "get system.serial"), "get system.serial").data) ?? "unknown"
        if let count = try? expectOK(request(port, sink, axis: 0, "get system.axiscount"), "get system.axiscount").data, let n = Int(count), n < axes {
            throw InstrumentError(.unsupported, device: name, "device \(address) has \(n) axes but the configuration asks for \(axes)")
        }
        // Move completions then arrive as alerts; polling still catches them if this is refused.
        _ = try? request(port, sink, axis: 0, "set comm.alert 1")
        hasEncoder = (try? expectOK(request(port, sink, axis: 0, "get encoder.pos"), "get encoder.pos")) != nil
        lastPoll = HostInstant(nanoseconds: 0)
        return DeviceIdentity(model: "Zaber device id \(deviceID)", serialNumber: serial, firmware: version, protocolVersion: "zaber-ascii")
    }

    public func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws {
        let port = try byteStream(link)
        let now = sink.clock.now()
        if now.nanoseconds - lastPoll.nanoseconds >= pollPeriod {
            lastPoll = now
            try poll(port, sink)
            return
        }
        // Until the next poll: take unsolicited messages (alerts) as they come.
        let wait = min(budget.nanosecondsValue, pollPeriod - (now.nanoseconds - lastPoll.nanoseconds))
        try readLines(port, timeout: .nanoseconds(max(1_000_000, wait)))
        while !lines.isEmpty { unsolicited(lines.removeFirst(), sink) }
    }

    public func shutdown(link: DeviceLink) {}

    public func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue] {
        let port = try byteStream(link)
        let axis = command.arguments["axis"].flatMap { if case .integer(let i) = $0 { Int(i) } else { nil } } ?? 0
        guard (0...axes).contains(axis) else {
            throw InstrumentError(.rejected, device: name, "axis \(axis) does not exist; this device has axes 1…\(axes) (0 = all)")
        }
        switch command.name {
        case "home":
            let (reply, sent, received) = try requestTimed(port, sink, axis: axis, "home")
            try expectOK(reply, "home")
            markMoving(axis)
            // The stage acted on the command between sending it and its reply.
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            sink.event(Event(kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs, message: "home axis \(axis == 0 ? "all" : String(axis))", values: ["axis": .integer(Int64(axis)), "command": .string("home")]))
            return ["axis": .integer(Int64(axis)), "busy": .bool(reply.busy)]
        case "move":
            guard axis > 0 || axes == 1 else { throw InstrumentError(.rejected, device: name, "say which axis to move (1…\(axes))") }
            let a = max(axis, 1)
            guard let micrometres = command.arguments["position_um"].flatMap(Self.number) else {
                throw InstrumentError(.rejected, device: name, "move needs position_um (a number)")
            }
            let relative = command.arguments["relative"] == .bool(true)
            let microsteps = Int64((micrometres / microstepMicrometres).rounded())
            let text = "move \(relative ? "rel" : "abs") \(microsteps)"
            let (reply, sent, received) = try requestTimed(port, sink, axis: a, text)
            try expectOK(reply, text)
            markMoving(a)
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            sink.event(Event(
                kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs,
                message: "move axis \(a) \(relative ? "by" : "to") \(micrometres) µm (\(microsteps) microsteps)",
                values: ["axis": .integer(Int64(a)), "command": .string(relative ? "move rel" : "move abs"), "target_um": .number(micrometres), "microsteps": .integer(microsteps)]))
            return ["axis": .integer(Int64(a)), "microsteps": .integer(microsteps), "target_um": .number(micrometres)]
        case "stop":
            let (reply, sent, received) = try requestTimed(port, sink, axis: axis, "stop")
            try expectOK(reply, "stop")
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            sink.event(Event(kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs, message: "stop axis \(axis == 0 ? "all" : String(axis))", values: ["axis": .integer(Int64(axis)), "command": .string("stop")]))
            return ["axis": .integer(Int64(axis))]
        default:
            throw InstrumentError(.unsupported, device: name, "no command \"\(command.name)\"; the Zaber driver knows home, move, stop")
        }
    }

    // MARK: Polling

    private func poll(_ port: any ByteStreamTransport, _ sink: any RecordSink) throws {
        let (pos, sent, received) = try requestTimed(port, sink, axis: 0, "get pos")
        try expectOK(pos, "get pos")
        let positions = pos.data.split(separator: " ").compactMap { Double($0) }
        guard positions.count >= axes else {
            malformedLines += 1
            sink.event(Event(kind: .alarm, source: name, hostTime: received, message: "position reply has \(positions.count) values for \(axes) axes: \(pos.data.debugDescription)"))
            return
        }
        var encoders: [Double] = []
        if hasEncoder, let enc = try? expectOK(request(port, sink, axis: 0, "get encoder.pos"), "get encoder.pos") {
            encoders = enc.data.split(separator: " ").compactMap { Double($0) }
        }
        for a in 0..<axes {
            sample[2 * a] = positions[a] * microstepMicrometres
            sample[2 * a + 1] = a < encoders.count ? encoders[a] * microstepMicrometres : .nan
        }
        // The device read its position somewhere between sending and receiving: stamp the middle.
        let stamp = HostInstant.bracketMidpoint(sent: sent, received: received).instant
        sample.withUnsafeBytes { sink.push(stream: 0, hostTime: stamp, deviceTime: nil, payload: $0) }
        if !pos.busy && moving.contains(true) {
            for a in moving.indices where moving[a] { finished(axis: a, at: received, sink) }
        }
    }

    private func markMoving(_ axis: Int) {
        if axis == 0 {
            for a in moving.indices { moving[a] = true }
        } else {
            moving[axis] = true
        }
    }

    private func finished(axis: Int, at time: HostInstant, _ sink: any RecordSink) {
        guard moving[axis] else { return }
        moving[axis] = false
        if axis == 0 { return }
        sink.event(Event(kind: .stateChange, source: name, hostTime: time, message: "axis \(axis) stopped moving", values: ["axis": .integer(Int64(axis)), "state": .string("idle")]))
    }

    // MARK: Messages

    private func unsolicited(_ item: (line: [UInt8], hostTime: HostInstant), _ sink: any RecordSink) {
        let message: ZaberProtocol.Message
        do {
            message = try ZaberProtocol.parse(item.line)
        } catch {
            malformedLines += 1
            sink.event(Event(kind: .alarm, source: name, hostTime: item.hostTime, message: "skipped a line from the stage: \(error)"))
            return
        }
        switch message {
        case .alert(let alert) where alert.device == address:
            noteWarning(alert.warning, at: item.hostTime, sink)
            if !alert.busy {
                if alert.axis == 0 {
                    for a in moving.indices where moving[a] { finished(axis: a, at: item.hostTime, sink) }
                } else if alert.axis < moving.count {
                    finished(axis: alert.axis, at: item.hostTime, sink)
                }
            }
        case .info(let info) where info.device == address:
            sink.event(Event(kind: .stateChange, source: name, hostTime: item.hostTime, message: "device says: \(info.text)"))
        default:
            strayReplies += 1
        }
    }

    private func noteWarning(_ flag: String, at time: HostInstant, _ sink: any RecordSink) {
        guard flag != warning else { return }
        let previous = warning
        warning = flag
        if flag == "--" {
            sink.event(Event(kind: .stateChange, source: name, hostTime: time, message: "warning \(previous) cleared", values: ["warning": .string(flag)]))
        } else {
            sink.event(Event(kind: .alarm, source: name, hostTime: time, message: "warning flag \(flag) (\(Self.describe(flag)))", values: ["warning": .string(flag)]))
        }
    }

    static func describe(_ flag: String) -> String {
        switch flag {
        case "NI": "movement interrupted (by stop, estop or a new move)"
        case "FF": "critical system error"
        case "FS": "stalled and stopped"
        case "FQ": "encoder error"
        case "WR": "no reference position: `home` the axis before trusting absolute positions"
        case "WL": "unexpected limit trigger"
        case "WV": "voltage out of range"
        case "WT": "temperature high"
        case "WM": "displaced while idle"
        default: "see the Zaber ASCII manual's warning flags"
        }
    }

    private static func number(_ v: EventValue) -> Double? {
        switch v {
        case .number(let d): d
        case .integer(let i): Double(i)
        default: nil
        }
    }

    private func byteStream(_ link: DeviceLink) throws -> any ByteStreamTransport {
        guard case .byteStream(let port) = link else {
            throw InstrumentError(.unsupported, device: name, "Zaber ASCII devices need a byte-stream transport (serial or TCP)")
        }
        return port
    }

    @discardableResult
    private func expectOK(_ reply: ZaberProtocol.Reply, _ what: String) throws -> ZaberProtocol.Reply {
        guard reply.accepted else {
            throw InstrumentError(.rejected, device: name, "device \(address) rejected \"\(what)\": \(reply.data) (\(Self.explainRejection(reply.data)))")
        }
        return reply
    }

    static func explainRejection(_ reason: String) -> String {
        switch reason {
        case "BADCOMMAND": "the device does not know this command"
        case "BADDATA": "an argument is out of range or malformed; for moves, check the target is within travel"
        case "BADAXIS": "no such axis on this device"
        case "DEVICEONLY": "send it to axis 0"
        case "AGAIN": "the device is busy; retry"
        case "PARKED": "the axis is parked; unpark it"
        case "STATUSBUSY": "the axis is moving"
        default: "see the Zaber ASCII manual"
        }
    }

    private func request(_ port: any ByteStreamTransport, _ sink: any RecordSink, axis: Int, _ text: String) throws -> ZaberProtocol.Reply {
        try requestTimed(port, sink, axis: axis, text).reply
    }

    /// Sends a command with a fresh message id and waits up to 1 s for its reply (joining
    /// continuation packets). Alerts and other traffic on the way are handled, not lost.
    ///
    /// Every answered request is a round trip of the transport: reported to the sink, whose
    /// spread is the uncertainty of this stage's host stamps (the stage has no clock).
    private func requestTimed(_ port: any ByteStreamTransport, _ sink: any RecordSink, axis: Int, _ text: String) throws -> (reply: ZaberProtocol.Reply, sent: HostInstant, received: HostInstant) {
        let id = nextID
        let sent = sink.clock.now()
        nextID = nextID % 99 + 1
        try ZaberProtocol.command(device: address, axis: axis, id: id, text).withUnsafeBytes { try port.write($0, timeout: .seconds(1)) }
        let deadline = sink.clock.now().advanced(byNanoseconds: 1_000_000_000)
        var reply: ZaberProtocol.Reply?
        var replyTime = sink.clock.now()
        while sink.clock.now() < deadline {
            if lines.isEmpty { try readLines(port, timeout: .milliseconds(50)) }
            while !lines.isEmpty {
                let item = lines.removeFirst()
                guard let message = try? ZaberProtocol.parse(item.line) else {
                    unsolicited(item, sink)  // records the malformed line
                    continue
                }
                switch message {
                case .reply(let r) where r.device == address && r.id == id && reply == nil:
                    noteWarning(r.warning, at: item.hostTime, sink)
                    reply = r
                    replyTime = item.hostTime
                    if !r.continues {
                        sink.roundTrip(sent: sent, received: replyTime)
                        return (r, sent, replyTime)
                    }
                case .info(let info) where info.device == address && info.id == id && reply != nil && info.text.hasPrefix("cont"):
                    var text = String(info.text.dropFirst(4)).trimmingLeadingSpace()
                    let more = text.hasSuffix("\\")
                    if more { text.removeLast() }
                    reply!.data += (reply!.data.isEmpty ? "" : " ") + text
                    if !more {
                        reply!.continues = false
                        sink.roundTrip(sent: sent, received: replyTime)
                        return (reply!, sent, replyTime)
                    }
                default:
                    unsolicited(item, sink)
                }
            }
        }
        throw InstrumentError(.replyTimedOut, device: name, "no reply from device \(address) to \"\(text)\" within 1 s; check the cable, the baud rate (115200) and the device number")
    }

    private func readLines(_ port: any ByteStreamTransport, timeout: Duration) throws {
        let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: timeout) }
        guard read.count > 0 else { return }
        readBuffer.withUnsafeBytes { buf in
            assembler.feed(UnsafeRawBufferPointer(rebasing: buf[0..<read.count])) { lines.append(($0, read.hostTime)) }
        }
    }
}

extension String {
    fileprivate func trimmingLeadingSpace() -> String { String(drop { $0 == " " }) }
}

extension Duration {
    fileprivate var nanosecondsValue: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
