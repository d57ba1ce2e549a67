import Foundation
import OperandoCore

/// Driver for PalmSens MethodSCRIPT potentiostats (EmStat Pico, EmStat4, Nexus): identifies the
/// device, generates scripts from techniques, runs them, and turns the output into the `ei` and
/// `eis` streams and stimulus/state events on the device clock (the script's `timer_get`).
///
/// Settings: `technique` (JSON of a technique or protocol, started at setup), `trigger_gpio_mask`
/// (0…255, default 0 = no pulses), `current_range` (fixed WE range in A), `gcd_capacity_mah`
/// (basis of C-rates). Commands: `technique {json}`, `abort`, `status`.
public final class PalmSensDriver: Instrument, @unchecked Sendable {
    public static let driverName = "palmsens-methodscript"
    public static let driverVersion = "1.0.0"
    public static let linkKind = LinkKind.byteStream
    public static let reportsActivity = true
    /// EmStat Pico: 230400 8N1, no flow control. EmStat4 / Nexus run at 921600: set `baud`.
    public static var serialDefaults: SerialSettings { SerialSettings(baudRate: 230_400) }
    /// `timer_get` values arrive with at least µs resolution.
    public static let clockResolutionNs = 1000.0

    public let name: String
    public let streams: [StreamDescriptor]
    public let generator: MethodSCRIPTGenerator
    public let initialProgram: Program?

    /// Lines that could not be decoded since the driver was made.
    public private(set) var malformedLines = 0
    public private(set) var identity: DeviceIdentity?

    // Run state (one I/O thread).
    private var program: Program?
    private var scriptSteps: [ScriptStep] = []
    private var running = false
    private var currentStep = 0
    private var currentCycle = 0.0
    private var scanCount = 0
    private var lastE = Double.nan
    private var lastI = Double.nan
    private var lastDeviceTime: Int64?
    private var pendingMarker: Int?
    private var lastSetpoint: String?

    // Preallocated hot-path storage.
    private var readBuffer = [UInt8](repeating: 0, count: 4096)
    /// Bytes read past a line a command waited for; decoded before the next read.
    private var stash: [UInt8] = []
    private var stashTime = HostInstant(nanoseconds: 0)
    private var framer = MSLineFramer(capacity: 1024)
    private var package = MSPackage()
    private var ei = [Double](repeating: 0, count: 7)
    private var eis = [Double](repeating: 0, count: 5)

    public init(name: String, settings: DeviceSettings) throws {
        self.name = name
        let mask = settings.int("trigger_gpio_mask") ?? 0
        guard (0...255).contains(mask) else {
            throw InstrumentError(.unsupported, device: name, "trigger_gpio_mask = \(mask) is outside 0…255 (0 = no trigger pulses)")
        }
        let range = settings.double("current_range")
        if let r = range, !(r > 0 && r <= 1) {
            throw InstrumentError(.unsupported, device: name, "current_range = \(r) is outside (0, 1] A")
        }
        let capacity = settings.double("gcd_capacity_mah")
        if let q = capacity, !(q > 0 && q <= 1e6) {
            throw InstrumentError(.unsupported, device: name, "gcd_capacity_mah = \(q) is outside (0, 1e6] mAh")
        }
        generator = MethodSCRIPTGenerator(triggerGPIOMask: mask, currentRangeA: range, defaultCapacityMah: capacity)
        if let json = settings.string("technique") {
            do {
                let p = try Program.decode(json: json)
                _ = try generator.generate(p)
                initialProgram = p
            } catch {
                throw InstrumentError(.unsupported, device: name, "technique setting: \(error)")
            }
        } else {
            initialProgram = nil
        }
        streams = [
            StreamDescriptor(
                name: "\(name)/ei", device: name, kind: .samples, elementType: .float64,
                fields: [
                    Field("E", unit: "V"), Field("I", unit: "A"), Field("device_time", unit: "s"), Field("cycle", unit: "1"),
                    Field("step", unit: "1"), Field("current_range", unit: "index"), Field("status", unit: "flags"),
                ], shape: [7], nominalRateHz: 10, maxPayloadBytes: 56),
            StreamDescriptor(
                name: "\(name)/eis", device: name, kind: .samples, elementType: .float64,
                fields: [Field("f", unit: "Hz"), Field("Z_real", unit: "Ohm"), Field("Z_imag", unit: "Ohm"), Field("E_dc", unit: "V"), Field("cycle", unit: "1")],
                shape: [5], nominalRateHz: 1, maxPayloadBytes: 40),
        ]
    }

    // MARK: Instrument

    public func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity {
        guard case .byteStream(let port) = link else {
            throw InstrumentError(.unsupported, device: name, "a MethodSCRIPT device needs a byte-stream transport")
        }
        framer.reset()
        stash.removeAll(keepingCapacity: true)
        running = false
        // Flush a partial command, then abort whatever runs.
        try port.write("\nZ\n", timeout: .seconds(1))
        let z = try? waitFor(port, sink: sink, what: "Z", timeout: 1_000_000_000) { if case .abortReply = $0 { true } else { false } }
        if case .abortReply(nil)? = z?.line {
            // A script was running: it ends with an empty line.
            _ = try? waitFor(port, sink: sink, what: "end of the aborted script", timeout: 2_000_000_000) { $0 == .scriptFinished }
        }
        try port.write("t\n", timeout: .seconds(1))
        var firmware: [String] = []
        while true {
            let r = try waitFor(port, sink: sink, what: "t (firmware version)", timeout: 2_000_000_000) { line in
                // The first line is a `t` reply; the following ones may start with anything.
                if !firmware.isEmpty { return true }
                if case .reply(UInt8(ascii: "t"), _) = line { return true }
                return false
            }
            let text: String
            switch r.line {
            case .reply(_, let t) where firmware.isEmpty: text = t
            default: text = r.raw
            }
            if text.hasSuffix("*") {
                firmware.append(String(text.dropLast()))
                break
            }
            firmware.append(text)
            guard firmware.count < 8 else { throw InstrumentError(.protocolViolation, device: name, "the reply to t never ended with '*'; is this a MethodSCRIPT device?") }
        }
        let fw = firmware.joined(separator: " ").trimmingCharacters(in: .whitespaces)
        try port.write("v\n", timeout: .seconds(1))
        let v = try waitFor(port, sink: sink, what: "v (MethodSCRIPT version)", timeout: 2_000_000_000) { if case .reply(UInt8(ascii: "v"), _) = $0 { true } else { false } }
        try port.write("i\n", timeout: .seconds(1))
        let i = try waitFor(port, sink: sink, what: "i (serial number)", timeout: 2_000_000_000) { if case .reply(UInt8(ascii: "i"), _) = $0 { true } else { false } }
        let id = DeviceIdentity(
            model: MethodSCRIPTCodec.deviceFamily(firmware: fw), serialNumber: Self.replyText(i.line), firmware: fw,
            protocolVersion: "MethodSCRIPT \(Self.replyText(v.line))")
        identity = id
        if let p = initialProgram { _ = try start(p, port, sink: sink) }
        return id
    }

    public func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws {
        guard case .byteStream(let port) = link else { return }
        if !stash.isEmpty {
            let bytes = stash
            stash.removeAll(keepingCapacity: true)
            bytes.withUnsafeBufferPointer { b in framer.feed(b) { handleFramed($0, $1, hostTime: stashTime, sink: sink) } }
        }
        let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: budget) }
        // Whole lines are decoded where they lie in the read buffer (no copy, no allocation).
        readBuffer.withUnsafeBufferPointer { b in
            framer.feed(UnsafeBufferPointer(rebasing: b[0..<read.count])) { handleFramed($0, $1, hostTime: read.hostTime, sink: sink) }
        }
    }

    public func shutdown(link: DeviceLink) {
        guard case .byteStream(let port) = link, running else { return }
        try? port.write("Z\n", timeout: .milliseconds(200))
    }

    public func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue] {
        guard case .byteStream(let port) = link else { throw InstrumentError(.unsupported, device: name, "no byte stream") }
        switch command.name {
        case "technique":
            guard case .string(let json)? = command.arguments["json"] else {
                throw InstrumentError(.rejected, device: name, "technique needs the argument json: a technique or protocol as JSON text")
            }
            let p: Program
            do { p = try Program.decode(json: json) } catch { throw InstrumentError(.rejected, device: name, "technique: \(error)") }
            return try start(p, port, sink: sink)
        case "abort":
            try port.write("Z\n", timeout: .seconds(1))
            let r = try waitFor(port, sink: sink, what: "Z (abort)", timeout: 2_000_000_000) { if case .abortReply = $0 { true } else { false } }
            if case .abortReply(let code) = r.line, code != nil { return ["aborted": .bool(false), "reason": .string("no script was running")] }
            return ["aborted": .bool(true)]
        case "status":
            var s: [String: EventValue] = ["running": .bool(running), "technique": .string(program?.kind ?? "none"), "step": .integer(Int64(currentStep)), "cycle": .integer(Int64(currentCycle))]
            if lastE.isFinite { s["e_v"] = .number(lastE) }
            if lastI.isFinite { s["i_a"] = .number(lastI) }
            if let st = scriptSteps.first(where: { $0.index == currentStep }) { s["step_kind"] = .string(st.kind) }
            return s
        default:
            throw InstrumentError(.unsupported, device: name, "the \(Self.driverName) driver has no command \"\(command.name)\"; it knows technique, abort, status")
        }
    }

    // MARK: Running a script

    private func start(_ p: Program, _ port: any ByteStreamTransport, sink: any RecordSink) throws -> [String: EventValue] {
        guard !running else {
            throw InstrumentError(.rejected, device: name, "a \(program?.kind ?? "script") is running; abort it first")
        }
        let script: GeneratedScript
        do { script = try generator.generate(p) } catch { throw InstrumentError(.rejected, device: name, "technique: \(error)") }
        try port.write("e\n" + script.text + "\n", timeout: .seconds(5))
        let r = try waitFor(port, sink: sink, what: "e (script accepted)", timeout: 2_000_000_000) {
            if case .ack = $0 { return true }
            if case .error = $0 { return true }
            return false
        }
        if case .error(let e) = r.line {
            throw InstrumentError(.rejected, device: name, "the device refused the script: !\(e.codeText) \(e.meaning)\(e.line.map { " at line \($0)" } ?? "")\(e.column.map { ", column \($0)" } ?? "")")
        }
        program = p
        scriptSteps = script.steps
        running = true
        currentStep = 0
        currentCycle = 0
        scanCount = 0
        lastSetpoint = nil
        pendingMarker = nil
        let hash = Self.fnv1a64(script.text)
        sink.event(Event(
            kind: .stateChange, source: name, hostTime: r.hostTime, message: "technique started: \(p.kind) (\(script.steps.count) steps)",
            values: ["technique": .string(p.kind), "technique_json": .string(p.json), "script_fnv1a64": .string(hash), "steps": .integer(Int64(script.steps.count))]))
        return ["technique": .string(p.kind), "steps": .integer(Int64(script.steps.count)), "script_fnv1a64": .string(hash)]
    }

    static func fnv1a64(_ s: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let hex = String(h, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    static func replyText(_ line: MSLine) -> String {
        if case .reply(_, let t) = line { return t.trimmingCharacters(in: .whitespaces) }
        return ""
    }

    /// Reads until a line accepted by `accept` arrives (other lines are handled as usual).
    private func waitFor(_ port: any ByteStreamTransport, sink: any RecordSink, what: String, timeout: Int64, _ accept: (MSLine) -> Bool) throws -> (line: MSLine, raw: String, hostTime: HostInstant) {
        let deadline = sink.clock.now().advanced(byNanoseconds: timeout)
        while sink.clock.now() < deadline {
            // Bytes left over after an earlier awaited line come first, in order.
            var bytes: [UInt8]
            var hostTime: HostInstant
            if !stash.isEmpty {
                bytes = stash
                hostTime = stashTime
                stash.removeAll(keepingCapacity: true)
            } else {
                let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: .milliseconds(50)) }
                bytes = Array(readBuffer[0..<read.count])
                hostTime = read.hostTime
            }
            var found: (MSLine, String, HostInstant)?
            for (k, byte) in bytes.enumerated() {
                switch framer.push(byte) {
                case .line?:
                    var raw = ""
                    let line = framer.withLine { l -> MSLine in
                        raw = String(decoding: l, as: UTF8.self)
                        return MethodSCRIPTCodec.decode(l, into: &package)
                    }
                    if accept(line) { found = (line, raw, hostTime) } else { handle(line, raw: raw, hostTime: hostTime, sink: sink) }
                case .overflow?: handle(.malformed(.lineTooLong), raw: "", hostTime: hostTime, sink: sink)
                case nil: break
                }
                if found != nil {
                    stash.append(contentsOf: bytes[(k + 1)...])
                    stashTime = hostTime
                    break
                }
            }
            if let found { return found }
        }
        throw InstrumentError(.replyTimedOut, device: name, "no \(what) within \(timeout / 1_000_000) ms; check the cable, the baud rate (EmStat Pico 230400, EmStat4/Nexus 921600) and that the device is powered")
    }

    /// One line from the framer: decoded and handled; a malformed or overlong one is an alarm.
    @inline(__always) private func handleFramed(_ output: MSLineFramer.Output, _ l: UnsafeBufferPointer<UInt8>, hostTime: HostInstant, sink: any RecordSink) {
        guard output == .line else {
            report(.lineTooLong, raw: "", hostTime: hostTime, sink: sink)
            return
        }
        let line = MethodSCRIPTCodec.decode(l, into: &package)
        if case .malformed(let why) = line {
            report(why, raw: String(decoding: l.prefix(120), as: UTF8.self), hostTime: hostTime, sink: sink)
            return
        }
        handle(line, raw: nil, hostTime: hostTime, sink: sink)
    }

    private func report(_ why: MSDecodeFailure, raw: String, hostTime: HostInstant, sink: any RecordSink) {
        malformedLines += 1
        sink.event(Event(
            kind: .alarm, source: name, hostTime: hostTime, message: "undecodable line from the device (\(why.rawValue)), skipped: \(raw.debugDescription)",
            values: ["malformed_lines": .integer(Int64(malformedLines)), "reason": .string(why.rawValue)]))
    }

    private func handle(_ line: MSLine, raw: String?, hostTime: HostInstant, sink: any RecordSink) {
        switch line {
        case .package: handlePackage(hostTime: hostTime, sink: sink)
        case .measurementLoopStart: scanCount = 0
        case .scanStart: scanCount += 1
        case .measurementLoopEnd, .scanEnd, .loopStart, .loopEnd, .ack, .reply: break
        case .text(let text): handleText(text, hostTime: hostTime, sink: sink)
        case .scriptFinished:
            guard running else { return }
            running = false
            sink.event(Event(kind: .stateChange, source: name, hostTime: hostTime, deviceTime: lastDeviceTime, message: "script finished: \(program?.kind ?? "")",
                             values: ["technique": .string(program?.kind ?? ""), "step": .integer(Int64(currentStep)), "cycle": .integer(Int64(currentCycle))]))
        case .abortReply(let code):
            if code == nil {
                sink.event(Event(kind: .stateChange, source: name, hostTime: hostTime, deviceTime: lastDeviceTime, message: "aborted: \(program?.kind ?? "script")",
                                 values: ["technique": .string(program?.kind ?? ""), "step": .integer(Int64(currentStep))]))
                running = false
            }
        case .error(let e):
            var values: [String: EventValue] = ["code": .string(e.codeText), "meaning": .string(e.meaning)]
            if let l = e.line { values["line"] = .integer(Int64(l)) }
            if let c = e.column { values["column"] = .integer(Int64(c)) }
            if let d = e.detail { values["detail"] = .string(d) }
            let at = e.line.map { " at script line \($0)\(e.column.map { ", column \($0)" } ?? "")" } ?? ""
            sink.event(Event(kind: .alarm, source: name, hostTime: hostTime, deviceTime: lastDeviceTime, message: "device error !\(e.codeText): \(e.meaning)\(at)", values: values))
        case .malformed(let why): report(why, raw: raw ?? "", hostTime: hostTime, sink: sink)
        }
    }

    private func handleText(_ text: String, hostTime: HostInstant, sink: any RecordSink) {
        let parts = text.split(separator: " ")
        if parts.first == "STEP", parts.count >= 2, let n = Int(parts[1]) {
            pendingMarker = n
            return
        }
        if parts.first == "LIMIT", parts.count >= 2 {
            let which = String(parts[1])
            var values: [String: EventValue] = ["limit": .string(which), "step": .integer(Int64(currentStep)), "cycle": .integer(Int64(currentCycle))]
            if lastE.isFinite { values["e_v"] = .number(lastE) }
            sink.event(Event(kind: .stateChange, source: name, hostTime: hostTime, deviceTime: lastDeviceTime, message: "limit reached: \(which) (E = \(lastE) V)", values: values))
            return
        }
        sink.event(Event(kind: .marker, source: name, hostTime: hostTime, deviceTime: lastDeviceTime, message: "device: \(text)", values: ["text": .string(text)]))
    }

    private func handlePackage(hostTime: HostInstant, sink: any RecordSink) {
        var t: Double?, e: Double?, i: Double?, f: Double?, zr: Double?, zi: Double?, edc: Double?, cyc: Double?, step: Double?
        var status: UInt8 = 0
        var range: Int16 = -1
        for k in 0..<package.count {
            let v = package[k]
            status |= v.status
            switch v.type {
            case MethodSCRIPTCodec.time: t = v.value
            case MethodSCRIPTCodec.potentialWEvsRE: e = v.value
            case MethodSCRIPTCodec.potentialApplied: if e == nil { e = v.value }
            case MethodSCRIPTCodec.currentWE:
                i = v.value
                if v.rangeIndex >= 0 { range = v.rangeIndex }
            case MethodSCRIPTCodec.currentApplied: if i == nil { i = v.value }
            case MethodSCRIPTCodec.frequency: f = v.value
            case MethodSCRIPTCodec.zReal:
                zr = v.value
                if v.rangeIndex >= 0 { range = v.rangeIndex }
            case MethodSCRIPTCodec.zImag: zi = v.value
            case MethodSCRIPTCodec.eisEDC: edc = v.value
            case MethodSCRIPTCodec.generic1: cyc = v.value
            case MethodSCRIPTCodec.generic2: step = v.value
            default: break
            }
        }
        var deviceTime: Int64?
        if let t, t.isFinite {
            let ns = Int64((t * 1e9).rounded())
            deviceTime = ns
            lastDeviceTime = ns
            sink.clockStamp(deviceTime: ns, arrival: hostTime)
        }
        if let s = step, s.isFinite { currentStep = Int(s) }
        if let c = cyc, c.isFinite { currentCycle = c + Double(max(0, scanCount - 1)) }
        if e == nil && i == nil && f == nil {
            // A marker package: the device time of the STEP announced just before.
            stepStarted(pendingMarker ?? currentStep, hostTime: hostTime, deviceTime: deviceTime, sink: sink)
            pendingMarker = nil
            return
        }
        if let f {
            eis[0] = f
            eis[1] = zr ?? .nan
            eis[2] = zi ?? .nan
            eis[3] = edc ?? .nan
            eis[4] = currentCycle
            eis.withUnsafeBytes { sink.push(stream: 1, hostTime: hostTime, deviceTime: deviceTime, payload: $0) }
            return
        }
        lastE = e ?? .nan
        lastI = i ?? .nan
        ei[0] = lastE
        ei[1] = lastI
        ei[2] = t ?? .nan
        ei[3] = currentCycle
        ei[4] = Double(currentStep)
        ei[5] = Double(range)
        ei[6] = Double(status)
        ei.withUnsafeBytes { sink.push(stream: 0, hostTime: hostTime, deviceTime: deviceTime, payload: $0) }
    }

    private func stepStarted(_ n: Int, hostTime: HostInstant, deviceTime: Int64?, sink: any RecordSink) {
        currentStep = n
        let info = scriptSteps.first { $0.index == n }
        let kind = info?.kind ?? "step"
        var values: [String: EventValue] = ["step": .integer(Int64(n)), "step_kind": .string(kind), "cycle": .integer(Int64(currentCycle)), "technique": .string(program?.kind ?? "")]
        if let v = info?.setpointV { values["setpoint_v"] = .number(v) }
        if let a = info?.setpointA { values["setpoint_a"] = .number(a) }
        sink.event(Event(kind: .stimulus, source: name, hostTime: hostTime, deviceTime: deviceTime, message: "step \(n): \(kind) \(info?.setpointText ?? "")".trimmingCharacters(in: .whitespaces), values: values))
        if let text = info?.setpointText, !text.isEmpty, text != lastSetpoint {
            lastSetpoint = text
            var sv: [String: EventValue] = ["step": .integer(Int64(n))]
            if let v = info?.setpointV { sv["setpoint_v"] = .number(v) }
            if let a = info?.setpointA { sv["setpoint_a"] = .number(a) }
            sink.event(Event(kind: .stimulus, source: name, hostTime: hostTime, deviceTime: deviceTime, message: "setpoint: \(text)", values: sv))
        }
        if generator.triggerGPIOMask != 0 {
            sink.event(Event(
                kind: .stimulus, source: name, hostTime: hostTime, deviceTime: deviceTime, message: "trigger: GPIO mask 0x\(String(generator.triggerGPIOMask, radix: 16)) pulsed at step \(n)",
                values: ["line": .string("gpio"), "mask": .integer(Int64(generator.triggerGPIOMask)), "edge": .string("pulse"), "step": .integer(Int64(n)), "command": .string("trigger")]))
        }
    }
}
