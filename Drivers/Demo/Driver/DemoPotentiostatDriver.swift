import Foundation
import OperandoCore

/// Driver for the demo potentiostat (Drivers/Demo/PROTOCOL.md): identifies it, configures rate
/// and current, starts cycling, and turns its lines into the `ei` stream (E, I, cycle per sample)
/// and stimulus events. A line it cannot parse becomes an alarm event with the line's text;
/// acquisition goes on.
public final class DemoPotentiostatDriver: Instrument, @unchecked Sendable {
    public static let driverName = "demo-potentiostat"
    public static let driverVersion = "1.0.0"
    public static let linkKind = LinkKind.byteStream
    /// The device prints its clock in whole microseconds.
    public static let clockResolutionNs = 1000.0
    /// Bracketed `TIME?` queries at setup, before streaming starts, so the clock model has a
    /// tight start.
    public static let setupClockQueries = 8

    public let name: String
    public let rateHz: Double
    public let current: Double
    /// Interval between bracketed `TIME?` queries while streaming, ns; 0 = none.
    public let clockQueryNs: Int64
    public let streams: [StreamDescriptor]
    /// When the outstanding `TIME?` was sent.
    private var timeQuerySent: HostInstant?
    private var lastTimeQuery = HostInstant(nanoseconds: 0)

    /// Preallocated: read buffer, line assembly, and one sample's payload.
    private var readBuffer = [UInt8](repeating: 0, count: 8192)
    private var line = [UInt8]()
    private var sample = [Double](repeating: 0, count: 3)
    private var lineHostTime = HostInstant(nanoseconds: 0)
    /// Lines that could not be parsed since the last connect.
    public private(set) var malformedLines = 0
    /// When the last byte arrived; silence for `silenceLimit` means the device stopped answering.
    private var lastData = HostInstant(nanoseconds: 0)
    /// Ten sample periods, at least 2 s.
    public var silenceLimit: Int64 { max(2_000_000_000, Int64(10e9 / rateHz)) }

    public static let maxLineBytes = 512

    public init(name: String, settings: DeviceSettings) throws {
        self.name = name
        rateHz = settings.double("rate_hz") ?? 10
        current = settings.double("current_a") ?? 0.0025
        let queryMs = settings.int("clock_query_ms") ?? 1000
        guard queryMs == 0 || (100...60000).contains(queryMs) else {
            throw InstrumentError(.unsupported, device: name, "clock_query_ms = \(queryMs) is outside 100…60000 (0 turns the queries off)")
        }
        clockQueryNs = Int64(queryMs) * 1_000_000
        guard (1...10000).contains(rateHz) else {
            throw InstrumentError(.unsupported, device: name, "rate_hz = \(rateHz) is outside 1…10000")
        }
        guard current > 0 && current <= 0.01 else {
            throw InstrumentError(.unsupported, device: name, "current_a = \(current) is outside (0, 0.01] A")
        }
        streams = [
            StreamDescriptor(
                name: "\(name)/ei", device: name, kind: .samples, elementType: .float64,
                fields: [Field("E", unit: "V"), Field("I", unit: "A"), Field("cycle", unit: "1")], shape: [3],
                nominalRateHz: rateHz, maxPayloadBytes: 24)
        ]
        line.reserveCapacity(Self.maxLineBytes)
    }

    public func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity {
        guard case .byteStream(let port) = link else {
            throw InstrumentError(.unsupported, device: name, "the demo potentiostat needs a byte-stream transport")
        }
        line.removeAll(keepingCapacity: true)
        // A device that was streaming before a reconnect may still be sending data lines.
        _ = try? command("STOP", port, sink: sink, expect: { _ in true })
        let idn = try command("*IDN?", port, sink: sink, expect: { $0.hasPrefix("OPERANDO,") })
        let fields = idn.split(separator: ",").map(String.init)
        guard fields.count == 4, fields[1] == "DEMO-PSTAT" else {
            throw InstrumentError(.protocolViolation, device: name, "unexpected identity \"\(idn)\"; is this a demo potentiostat?")
        }
        timeQuerySent = nil
        if clockQueryNs > 0 {
            for _ in 0..<Self.setupClockQueries {
                let sent = sink.clock.now()
                let (reply, received) = try commandTimed("TIME?", port, sink: sink, expect: { $0.hasPrefix("T ") })
                var f = LineFields(Array(reply.utf8))
                _ = f.next()
                guard let us = f.nextInt(), f.atEnd else {
                    throw InstrumentError(.protocolViolation, device: name, "TIME? answered \(reply.debugDescription); expected \"T <device_us>\"")
                }
                sink.clockExchange(hostBefore: sent, deviceTime: us * 1000, hostAfter: received)
            }
            lastTimeQuery = sink.clock.now()
        }
        try expectOK(command("RATE \(rateHz)", port, sink: sink, expect: isReply), "RATE")
        try expectOK(command("CURRENT \(current)", port, sink: sink, expect: isReply), "CURRENT")
        try expectOK(command("START", port, sink: sink, expect: isReply), "START")
        lastData = sink.clock.now()
        return DeviceIdentity(model: fields[1], serialNumber: fields[2], firmware: fields[3], protocolVersion: "demo-pstat/1")
    }

    public func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws {
        guard case .byteStream(let port) = link else { return }
        if clockQueryNs > 0 {
            let now = sink.clock.now()
            if let sent = timeQuerySent, now.nanoseconds - sent.nanoseconds > 2_000_000_000 {
                timeQuerySent = nil  // unanswered: ask again at the next interval
            }
            if timeQuerySent == nil && now.nanoseconds - lastTimeQuery.nanoseconds >= clockQueryNs {
                lastTimeQuery = now
                timeQuerySent = sink.clock.now()
                try port.write("TIME?\n", timeout: .seconds(1))
            }
        }
        let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: budget) }
        if read.count == 0 {
            let silent = read.hostTime.nanoseconds - lastData.nanoseconds
            if silent > silenceLimit {
                throw InstrumentError(.replyTimedOut, device: name, "no data for \(silent / 1_000_000) ms while streaming at \(rateHz) Hz; the device stopped answering")
            }
            return
        }
        lastData = read.hostTime
        for i in 0..<read.count {
            let byte = readBuffer[i]
            if byte == UInt8(ascii: "\n") {
                handleLine(hostTime: read.hostTime, sink: sink)
                line.removeAll(keepingCapacity: true)
            } else if line.count < Self.maxLineBytes {
                line.append(byte)
            }
        }
    }

    /// `trigger` on a GPIO pin (`line` = "gpio0"…"gpio3"): `asserted` for one edge, or a pulse of
    /// `pulse_ms` (default 10). The device answers each change with the device time of the edge,
    /// so the stimulus is recorded on the device clock and mapped like its data.
    public func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue] {
        guard case .byteStream(let port) = link else { throw InstrumentError(.unsupported, device: name, "no byte stream") }
        guard command.name == "trigger" else {
            throw InstrumentError(.unsupported, device: name, "the demo potentiostat has no command \"\(command.name)\"; it knows trigger (GPIO)")
        }
        guard case .string(let lineName)? = command.arguments["line"], lineName.hasPrefix("gpio"), let pin = Int(lineName.dropFirst(4)), (0...3).contains(pin) else {
            throw InstrumentError(.rejected, device: name, "the demo potentiostat's trigger outputs are gpio0…gpio3")
        }
        var edges = 0
        func edge(_ high: Bool) throws {
            let (reply, received) = try commandTimed("GPIO \(pin) \(high ? 1 : 0)", port, sink: sink, expect: { $0.hasPrefix("OK") || $0.hasPrefix("ERR") })
            guard reply.hasPrefix("OK "), let us = Int64(reply.dropFirst(3)) else {
                throw InstrumentError(.rejected, device: name, "GPIO \(pin) was refused: \(reply)")
            }
            sink.event(Event(
                kind: .stimulus, source: name, hostTime: received, deviceTime: us * 1000, message: "trigger: GPIO\(pin) \(high ? "high" : "low")",
                values: ["line": .string(lineName), "edge": .string(high ? "asserted" : "released"), "command": .string("trigger")]))
            edges += 1
        }
        if case .bool(let asserted)? = command.arguments["asserted"] {
            try edge(asserted)
        } else {
            let ms = command.arguments["pulse_ms"]?.doubleValue ?? 10
            try edge(true)
            let until = sink.clock.now().advanced(byNanoseconds: Int64(ms * 1e6))
            // Data keeps flowing while the pin is held: keep decoding it.
            while sink.clock.now() < until {
                let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: .milliseconds(max(1, Int(ms / 4)))) }
                for i in 0..<read.count {
                    if readBuffer[i] == UInt8(ascii: "\n") {
                        handleLine(hostTime: read.hostTime, sink: sink)
                        line.removeAll(keepingCapacity: true)
                    } else if line.count < Self.maxLineBytes {
                        line.append(readBuffer[i])
                    }
                }
            }
            try edge(false)
        }
        return ["line": .string(lineName), "edges": .integer(Int64(edges))]
    }

    public func shutdown(link: DeviceLink) {
        guard case .byteStream(let port) = link else { return }
        try? port.write("STOP\n", timeout: .milliseconds(200))
    }

    private func isReply(_ s: String) -> Bool { s == "OK" || s.hasPrefix("ERR") }

    private func expectOK(_ reply: String, _ what: String) throws {
        guard reply == "OK" else {
            throw InstrumentError(.rejected, device: name, "\(what) was refused: \(reply)")
        }
    }

    /// Sends one command and waits up to 2 s for a reply line accepted by `expect`; data lines that
    /// arrive meanwhile are decoded as usual, so nothing is lost during setup.
    private func command(_ text: String, _ port: any ByteStreamTransport, sink: any RecordSink, expect: (String) -> Bool) throws -> String {
        try commandTimed(text, port, sink: sink, expect: expect).reply
    }

    /// `command`, also returning when the read that completed the reply returned.
    private func commandTimed(_ text: String, _ port: any ByteStreamTransport, sink: any RecordSink, expect: (String) -> Bool) throws -> (reply: String, received: HostInstant) {
        try port.write(text + "\n", timeout: .seconds(1))
        let deadline = sink.clock.now().advanced(byNanoseconds: 2_000_000_000)
        while sink.clock.now() < deadline {
            let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: .milliseconds(100)) }
            var reply: String?
            for i in 0..<read.count {
                let byte = readBuffer[i]
                if byte == UInt8(ascii: "\n") {
                    let s = String(decoding: line, as: UTF8.self)
                    if reply == nil && expect(s) {
                        reply = s
                    } else {
                        handleLine(hostTime: read.hostTime, sink: sink)
                    }
                    line.removeAll(keepingCapacity: true)
                } else if line.count < Self.maxLineBytes {
                    line.append(byte)
                }
            }
            if let reply { return (reply, read.hostTime) }
        }
        throw InstrumentError(.replyTimedOut, device: name, "no reply to \"\(text)\" within 2 s; check the cable and that the device is powered")
    }

    /// Decodes one complete line (in `line`) without allocating for data lines.
    private func handleLine(hostTime: HostInstant, sink: any RecordSink) {
        guard let first = line.first else { return }
        var fields = LineFields(line)
        switch first {
        case UInt8(ascii: "D"):
            _ = fields.next()
            if let us = fields.nextInt(), let e = fields.nextDouble(), let i = fields.nextDouble(), let cycle = fields.nextDouble(), fields.atEnd {
                sample[0] = e
                sample[1] = i
                sample[2] = cycle
                sample.withUnsafeBytes { sink.push(stream: 0, hostTime: hostTime, deviceTime: us * 1000, payload: $0) }
                sink.clockStamp(deviceTime: us * 1000, arrival: hostTime)
                return
            }
        case UInt8(ascii: "S"):
            _ = fields.next()
            if let us = fields.nextInt(), let i = fields.nextDouble(), let reason = fields.nextString(), fields.atEnd {
                sink.event(Event(
                    kind: .stimulus, source: name, hostTime: hostTime, deviceTime: us * 1000,
                    message: "applied current \(i) A (\(reason))", values: ["current_a": .number(i), "reason": .string(reason)]))
                return
            }
        case UInt8(ascii: "T"):
            // The answer to a TIME? sent while streaming: a bracketed query of the device clock.
            _ = fields.next()
            if let us = fields.nextInt(), fields.atEnd {
                if let sent = timeQuerySent {
                    sink.clockExchange(hostBefore: sent, deviceTime: us * 1000, hostAfter: hostTime)
                    timeQuerySent = nil
                }
                return
            }
        default:
            break
        }
        malformedLines += 1
        let text = String(decoding: line.prefix(120), as: UTF8.self)
        sink.event(Event(
            kind: .alarm, source: name, hostTime: hostTime,
            message: "unparseable line from the device, kept here and skipped: \(text.debugDescription)",
            values: ["malformed_lines": .integer(Int64(malformedLines))]))
    }
}

/// Splits an ASCII line on single spaces and parses numbers without allocating.
struct LineFields {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { index >= bytes.count }

    mutating func next() -> Range<Int>? {
        while index < bytes.count && bytes[index] == UInt8(ascii: " ") { index += 1 }
        guard index < bytes.count else { return nil }
        let start = index
        while index < bytes.count && bytes[index] != UInt8(ascii: " ") { index += 1 }
        let r = start..<index
        while index < bytes.count && bytes[index] == UInt8(ascii: " ") { index += 1 }
        return r
    }

    mutating func nextInt() -> Int64? {
        guard let r = next() else { return nil }
        var value: Int64 = 0
        var negative = false
        for (k, b) in bytes[r].enumerated() {
            if k == 0 && b == UInt8(ascii: "-") { negative = true; continue }
            guard b >= 48 && b <= 57 else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(b - 48))
            if o1 || o2 { return nil }
            value = a
        }
        return negative ? -value : value
    }

    mutating func nextDouble() -> Double? {
        guard let r = next(), r.count <= 40 else { return nil }
        // Parse through a stack buffer to avoid a String allocation per value.
        var buf: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)
        return withUnsafeMutableBytes(of: &buf) { raw -> Double? in
            for (k, b) in bytes[r].enumerated() {
                guard (b >= 48 && b <= 57) || b == 43 || b == 45 || b == 46 || b == 69 || b == 101 else { return nil }
                raw[k] = b
            }
            raw[r.count] = 0
            var end: UnsafeMutablePointer<CChar>?
            let p = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
            let v = strtod(p, &end)
            return end == p + r.count && v.isFinite ? v : nil
        }
    }

    mutating func nextString() -> String? {
        guard let r = next() else { return nil }
        return String(decoding: bytes[r], as: UTF8.self)
    }
}
