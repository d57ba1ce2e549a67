import OperandoCore

/// Driver for a Nanonis SPM controller (AFM/STM) through its TCP programming interface
/// (`NanonisProtocol`; shared/protocols/nanonis-tcp.md). In production the link is a TCP
/// connection to one of the Nanonis software's ports (commonly 6501); in tests, an in-memory
/// link to `NanonisSimulator`.
///
/// Streams (the settings are `NanonisSettings`; C channels, P pixels, L lines):
///
/// - `<name>/line`, frames of f32, shape [1 + 2C, P]: one record per scanned line, both
///   directions. Row 0 is a header: [0] the line's number in scan order (0 = the first line of
///   the frame), [1] its row in the frame as Scan.FrameDataGrab returns it, [2] the scan
///   direction (1 up, 0 down), [3] the frame number (counted by this driver from 0), [4] the
///   line's duration in s, then NaN. Rows 1 + 2c and 2 + 2c are channel c's forward and backward
///   data. The record's host time is the line's start (the previous line's end, or the scan's
///   start); its end is the start plus the duration (when the controller reported it done).
/// - `<name>/frame`, frames of f32, shape [C, 2, L, P]: one record per frame when it is complete
///   (or when the scan stops mid-frame: unscanned lines are NaN), channel-major, forward then
///   backward, rows as Scan.FrameDataGrab returns them. Host time: the frame's start.
/// - `<name>/signals`, samples of f64, one field per configured signal, read with
///   Signals.ValsGet at `signals_hz` and stamped at the middle of the request/reply bracket
///   (only when `signals` is not empty and `signals_hz` > 0).
///
/// No record has a device time: the controller has no clock we can read. Every request/reply
/// is reported to the sink as a round trip, whose spread is the uncertainty of the host stamps
/// (except the blocking Scan.WaitEndOfLine, whose duration is the wait, not the link).
///
/// The stream descriptors are fixed before the driver first connects, so their fields are named
/// `signal_<index>`; setup reads Signals.NamesGet and records the controller's names and units
/// in a state-change event (`signalNames` has them too).
///
/// Scan progress: Scan.WaitEndOfLine with a short timeout (so signals are read on time) reports
/// each pass that ends; after a backward pass, Scan.FrameDataGrab of every channel and
/// direction gives the lines finished since the last report. Assumed of the controller (the PDF
/// is silent; the simulator does the same): WaitEndOfLine's line number counts lines in scan
/// order from 0, and row 0 of the grabbed frame is its top, so scanning up starts at the last
/// row. A line whose report was missed is found from the next report; when the next frame's
/// lines are reported before a frame's last lines were read, the frame is recorded as the last
/// grab had it, with an alarm counting the lines lost. Lines whose pixels the controller had not
/// filled (NaN) are recorded as they are, with an alarm.
///
/// Like the Zaber driver, this is a query/response path (a few requests per line or signals
/// period, not a sample stream): requests are built in small arrays, an allocation per request
/// that the rate makes harmless; replies are decoded from one reused buffer into preallocated
/// line, frame and signals storage.
///
/// Commands (`perform`): `scan` (`action` start|stop|pause|resume, optional `direction`
/// up|down), `bias` (`volts`), `setpoint` (`value`, in the Z controller's unit). Each is a
/// stimulus event at the middle of its request/reply bracket, ± half the bracket.
public final class NanonisDriver: Instrument, @unchecked Sendable {
    public static let driverName = "nanonis-spm"
    public static let driverVersion = "1.0.0"
    public static let linkKind = LinkKind.byteStream

    public let name: String
    public let settings: NanonisSettings
    public let streams: [StreamDescriptor]
    /// Indexes into `streams`.
    public let lineStream = 0
    public let frameStream = 1
    public let signalsStream: Int?

    /// The controller's signal names (Signals.NamesGet), from the last setup.
    public private(set) var signalNames: [String] = []
    /// Lines recorded and lines lost (cleared by the controller before they were read) since
    /// the driver was made.
    public private(set) var linesRecorded = 0
    public private(set) var linesLost = 0
    public private(set) var framesRecorded = 0

    private var assembler = NanonisResponseAssembler()
    private var readBuffer = [UInt8](repeating: 0, count: 64 * 1024)
    private var lastReadTime = HostInstant(nanoseconds: 0)
    private let replyTimeoutNs: Int64

    /// [channel][direction: 0 forward, 1 backward][row][pixel], filled by the grabs.
    private var frameStore: [Float]
    /// A second frame buffer, made when first needed: a grab that must not overwrite the frame
    /// being recorded (reading a frame's last lines after the next frame has begun).
    private var spareStore: [Float] = []
    /// One line record.
    private var lineRecord: [Float]
    private var signalValues: [Double]
    /// Nominal line time (forward + backward) as the controller reports it, ns.
    private var linePeriodNs: Int64

    private enum Phase {
        case idle
        case following(FrameProgress)
    }

    /// What the driver knows of the frame being scanned.
    private struct FrameProgress {
        var number: Int
        /// Lines recorded so far (scan order).
        var nextLine = 0
        /// The frame's start; nil until its first line is seen, for frames the driver did not start.
        var start: HostInstant?
        /// The end of the last recorded line, or the scan's start; nil when joining a scan in progress.
        var lastLineEnd: HostInstant?
        /// The frame's direction (true: up), once a grab has told.
        var up: Bool?
    }

    private var phase = Phase.idle
    private var nextFrameNumber = 0
    private var scanUp = true
    private var nextSignals = HostInstant(nanoseconds: 0)
    private var lastStatusCheck = HostInstant(nanoseconds: 0)
    private static let statusCheckNs: Int64 = 250_000_000

    public init(name: String, settings: DeviceSettings) throws {
        self.name = name
        let s = try NanonisSettings(settings, device: name)
        self.settings = s
        replyTimeoutNs = Int64(s.replyTimeoutMs) * 1_000_000
        let c = s.channels.count
        let linePeriod = s.linePeriodSeconds
        var streams = [
            StreamDescriptor(
                name: "\(name)/line", device: name, kind: .frames, elementType: .float32,
                fields: [Field("header", unit: "line,row,scan_up,frame")]
                    + s.channels.flatMap { [Field("signal_\($0)_forward", unit: ""), Field("signal_\($0)_backward", unit: "")] },
                shape: [1 + 2 * c, s.pixels], nominalRateHz: 1 / linePeriod, maxPayloadBytes: (1 + 2 * c) * s.pixels * 4),
            StreamDescriptor(
                name: "\(name)/frame", device: name, kind: .frames, elementType: .float32,
                fields: s.channels.map { Field("signal_\($0)", unit: "") },
                shape: [c, 2, s.lines, s.pixels], nominalRateHz: 1 / (linePeriod * Double(s.lines)), maxPayloadBytes: s.frameBytes),
        ]
        if s.hasSignalsStream {
            signalsStream = streams.count
            streams.append(StreamDescriptor(
                name: "\(name)/signals", device: name, kind: .samples, elementType: .float64,
                fields: s.signals.map { Field("signal_\($0)", unit: "") }, shape: [s.signals.count],
                nominalRateHz: s.signalsHz, maxPayloadBytes: 8 * s.signals.count))
        } else {
            signalsStream = nil
        }
        self.streams = streams
        frameStore = [Float](repeating: .nan, count: s.frameBytes / 4)
        lineRecord = [Float](repeating: .nan, count: (1 + 2 * c) * s.pixels)
        signalValues = [Double](repeating: 0, count: s.signals.count)
        linePeriodNs = Int64(linePeriod * 1e9)
    }

    // MARK: Instrument

    public func setup(link: DeviceLink, sink: any RecordSink) throws -> DeviceIdentity {
        let port = try byteStream(link)
        assembler.reset()
        phase = .idle
        let s = settings

        // Identity. Util.VersionGet is missing from older versions: then the firmware is unknown.
        var firmware = "unknown"
        do {
            let v = try call(port, sink, "Util.VersionGet") { (r) throws(NanonisWireError) in
                (try r.string("the product line"), try r.string("the version"), try r.uint32("the host application release"), try r.uint32("the RT engine release"))
            }.value
            firmware = "\(v.0) \(v.1), host release \(v.2), RT engine release \(v.3)"
        } catch let e as InstrumentError where e.code == .rejected {
            firmware = "unknown (Util.VersionGet refused)"
        }

        signalNames = try call(port, sink, "Signals.NamesGet") { (r) throws(NanonisWireError) in try r.stringArray("the signal names", limit: 4096) }.value
        for (key, list) in [("channels", s.channels), ("signals", s.signals)] {
            for i in list where Int(i) >= signalNames.count {
                throw InstrumentError(.unsupported, device: name, "\(key) lists signal \(i), but the controller has \(signalNames.count) signals (0…\(signalNames.count - 1))")
            }
        }
        sink.event(Event(
            kind: .stateChange, source: name, hostTime: sink.clock.now(),
            message: "scan channels: \(s.channels.map { "\($0) \(signalNames[Int($0)])" }.joined(separator: ", "))"
                + (s.hasSignalsStream ? "; signals: \(s.signals.map { "\($0) \(signalNames[Int($0)])" }.joined(separator: ", "))" : ""),
            values: Dictionary((s.channels + s.signals).map { ("signal_\($0)", EventValue.string(signalNames[Int($0)])) }) { a, _ in a }))

        // A scan may be running (the runner reconnected, or someone started one): follow it when it
        // is the configured one, otherwise stop it to configure.
        if try scanRunning(port, sink) {
            if try configurationMatches(port, sink) {
                phase = .following(FrameProgress(number: takeFrameNumber(), start: nil, lastLineEnd: nil))
                sink.event(Event(kind: .stateChange, source: name, hostTime: sink.clock.now(), message: "following the scan in progress (its configuration matches)", values: ["state": .string("scanning")]))
                nextSignals = sink.clock.now()
                return identity(firmware)
            }
            try action(port, sink, code: 1, up: scanUp)
            try waitUntilStopped(port, sink)
            sink.event(Event(kind: .stateChange, source: name, hostTime: sink.clock.now(), message: "stopped the scan in progress to configure it", values: ["state": .string("stopped")]))
        }
        try configure(port, sink)
        if s.startScan {
            let (sent, received) = try action(port, sink, code: 0, up: true)
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            scanUp = true
            // The frame starts with its first line, after the tip has moved to the start point.
            phase = .following(FrameProgress(number: takeFrameNumber(), start: nil, lastLineEnd: at.instant))
            sink.event(Event(kind: .stateChange, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs, message: "scan started (up)", values: ["state": .string("scanning"), "direction": .string("up")]))
        }
        nextSignals = sink.clock.now()
        return identity(firmware)
    }

    public func acquire(link: DeviceLink, sink: any RecordSink, budget: Duration) throws {
        let port = try byteStream(link)
        let now = sink.clock.now()
        let budgetNs = max(1_000_000, budget.nanosecondsValue)
        var waitNs = budgetNs
        if signalsStream != nil {
            if now >= nextSignals {
                try readSignals(port, sink)
                let period = Int64(1e9 / settings.signalsHz)
                nextSignals = nextSignals.advanced(byNanoseconds: period)
                if nextSignals < now { nextSignals = now.advanced(byNanoseconds: period) }  // fell behind: skip ahead
                return
            }
            waitNs = min(waitNs, nextSignals.nanoseconds - now.nanoseconds)
        }
        switch phase {
        case .idle:
            if now.nanoseconds - lastStatusCheck.nanoseconds >= Self.statusCheckNs {
                lastStatusCheck = now
                if try scanRunning(port, sink) {
                    phase = .following(FrameProgress(number: takeFrameNumber(), start: nil, lastLineEnd: nil))
                    sink.event(Event(kind: .stateChange, source: name, hostTime: now, message: "a scan started at the controller; following it", values: ["state": .string("scanning")]))
                }
                return
            }
            // Nothing is due: rest on the link (the controller sends nothing unasked; a read also
            // notices a closed connection).
            try readSome(port, timeoutNs: min(waitNs, Self.statusCheckNs))
        case .following(var progress):
            let waitMs = Int32(clamping: max(1, waitNs / 1_000_000))
            var body = NanonisBodyWriter()
            body.int32(waitMs)
            let (report, _, received) = try call(port, sink, "Scan.WaitEndOfLine", body: body, extraWaitNs: Int64(waitMs) * 1_000_000, latency: false) { (r) throws(NanonisWireError) in
                (timedOut: try r.uint32("the timeout status") != 0, line: try r.int32("the line number"), movement: try r.uint16("the type of movement"), pass: try r.int32("the pass number"))
            }
            if !report.timedOut && report.movement == 1 {
                try collectLines(through: Int(report.line), observed: received, &progress, port, sink)
                phase = .following(progress)
                return
            }
            if report.timedOut && received.nanoseconds - lastStatusCheck.nanoseconds >= Self.statusCheckNs {
                lastStatusCheck = received
                if try !scanRunning(port, sink) {
                    try endFollowing(progress, port, sink, reason: "the scan ended", at: received)
                }
            }
        }
    }

    /// Leaves the scan as it is: it belongs to the controller, and the next connection follows it.
    public func shutdown(link: DeviceLink) {}

    public func perform(_ command: DeviceCommand, link: DeviceLink, sink: any RecordSink) throws -> [String: EventValue] {
        let port = try byteStream(link)
        switch command.name {
        case "scan":
            guard case .string(let actionName)? = command.arguments["action"], let code = Self.scanActions[actionName] else {
                throw InstrumentError(.rejected, device: name, "scan needs action = start, stop, pause or resume")
            }
            var up = scanUp
            switch command.arguments["direction"] {
            case nil: break
            case .string("up")?: up = true
            case .string("down")?: up = false
            case let other?: throw InstrumentError(.rejected, device: name, "scan direction \(other) is not up or down")
            }
            if code == 0, case .following(let progress) = phase, progress.nextLine > 0 {
                // Starting again clears the controller's buffer: keep what the frame had.
                try endFollowing(progress, port, sink, reason: "a new scan was started", at: sink.clock.now())
            }
            let (sent, received) = try action(port, sink, code: code, up: up)
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            scanUp = up
            let direction = up ? "up" : "down"
            sink.event(Event(
                kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs, message: "scan \(actionName) (\(direction))",
                values: ["command": .string("scan"), "action": .string(actionName), "direction": .string(direction)]))
            switch code {
            case 0:
                phase = .following(FrameProgress(number: takeFrameNumber(), start: nil, lastLineEnd: at.instant))
            case 1:
                if case .following(let progress) = phase { try endFollowing(progress, port, sink, reason: "the scan was stopped", at: at.instant) }
            default:
                break
            }
            return ["action": .string(actionName), "direction": .string(direction)]
        case "bias":
            guard let volts = command.arguments["volts"]?.doubleValue, volts.isFinite, abs(volts) <= 10 else {
                throw InstrumentError(.rejected, device: name, "bias needs volts, a number within ±10 V")
            }
            var body = NanonisBodyWriter()
            body.float32(Float(volts))
            let (_, sent, received) = try call(port, sink, "Bias.Set", body: body) { (_) throws(NanonisWireError) in () }
            let read = try call(port, sink, "Bias.Get") { (r) throws(NanonisWireError) in try r.float32("the bias") }.value
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            let values: [String: EventValue] = ["set_v": .number(Double(Float(volts))), "read_v": .number(Double(read))]
            sink.event(Event(
                kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs, message: "bias set to \(Float(volts)) V (reads \(read) V)",
                values: values.merging(["command": .string("bias")]) { a, _ in a }))
            return values
        case "setpoint":
            guard let value = command.arguments["value"]?.doubleValue, value.isFinite else {
                throw InstrumentError(.rejected, device: name, "setpoint needs value, a number in the Z controller's unit (A for current, m for amplitude, Hz for frequency shift)")
            }
            var body = NanonisBodyWriter()
            body.float32(Float(value))
            let (_, sent, received) = try call(port, sink, "ZCtrl.SetpntSet", body: body) { (_) throws(NanonisWireError) in () }
            let read = try call(port, sink, "ZCtrl.SetpntGet") { (r) throws(NanonisWireError) in try r.float32("the setpoint") }.value
            let at = HostInstant.bracketMidpoint(sent: sent, received: received)
            let values: [String: EventValue] = ["set": .number(Double(Float(value))), "read": .number(Double(read))]
            sink.event(Event(
                kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs, message: "Z controller setpoint set to \(Float(value)) (reads \(read))",
                values: values.merging(["command": .string("setpoint")]) { a, _ in a }))
            return values
        case "tip":
            // Follow Me: move the tip to (x, y) when given, then read where it is.
            var sent: HostInstant?
            var received: HostInstant?
            if let x = command.arguments["x_nm"]?.doubleValue, let y = command.arguments["y_nm"]?.doubleValue {
                guard x.isFinite, y.isFinite else { throw InstrumentError(.rejected, device: name, "tip needs finite x_nm and y_nm") }
                var body = NanonisBodyWriter()
                body.float64(x * 1e-9)
                body.float64(y * 1e-9)
                body.uint32(1)  // wait for the end of the move
                let r = try call(port, sink, "FolMe.XYPosSet", body: body) { (_) throws(NanonisWireError) in () }
                (sent, received) = (r.sent, r.received)
            }
            var body = NanonisBodyWriter()
            body.uint32(1)  // wait for newest data
            let read = try call(port, sink, "FolMe.XYPosGet", body: body) { (r) throws(NanonisWireError) in (try r.float64("X (m)"), try r.float64("Y (m)")) }.value
            let values: [String: EventValue] = ["x_nm": .number(read.0 * 1e9), "y_nm": .number(read.1 * 1e9)]
            if let sent, let received {
                let at = HostInstant.bracketMidpoint(sent: sent, received: received)
                sink.event(Event(
                    kind: .stimulus, source: name, hostTime: at.instant, uncertaintyNs: at.uncertaintyNs,
                    message: "tip moved to (\(read.0 * 1e9), \(read.1 * 1e9)) nm",
                    values: values.merging(["command": .string("tip")]) { a, _ in a }))
            }
            return values
        default:
            throw InstrumentError(.unsupported, device: name, "no command \"\(command.name)\"; the nanonis-spm driver knows scan, bias, setpoint, tip")
        }
    }

    static let scanActions: [String: UInt16] = ["start": 0, "stop": 1, "pause": 2, "resume": 3]

    // MARK: Setup steps

    private func identity(_ firmware: String) -> DeviceIdentity {
        DeviceIdentity(model: "Nanonis SPM controller", serialNumber: "unknown", firmware: firmware, protocolVersion: "nanonis-tcp")
    }

    private func takeFrameNumber() -> Int {
        defer { nextFrameNumber += 1 }
        return nextFrameNumber
    }

    private func configure(_ port: any ByteStreamTransport, _ sink: any RecordSink) throws {
        let s = settings
        var buffer = NanonisBodyWriter()
        buffer.int32Array(s.channels)
        buffer.int32(Int32(s.pixels))
        buffer.int32(Int32(s.lines))
        _ = try call(port, sink, "Scan.BufferSet", body: buffer) { (_) throws(NanonisWireError) in () }
        var frame = NanonisBodyWriter()
        for v in frameArguments { frame.float32(v) }
        _ = try call(port, sink, "Scan.FrameSet", body: frame) { (_) throws(NanonisWireError) in () }
        var speed = NanonisBodyWriter()
        let mps = Float(s.speedNmPerS * 1e-9)
        let lineTime = Float(s.frameSizeNm / s.speedNmPerS)
        speed.float32(mps)  // forward speed
        speed.float32(mps)  // backward speed
        speed.float32(lineTime)  // forward time per line
        speed.float32(lineTime)  // backward time per line
        speed.uint16(1)  // keep the linear speed constant
        speed.float32(1)  // backward/forward speed ratio
        _ = try call(port, sink, "Scan.SpeedSet", body: speed) { (_) throws(NanonisWireError) in () }
        // Read back: a controller that did not take a value is refused with what it has.
        _ = try configurationMatches(port, sink, report: true)
    }

    /// Center X, center Y, width, height (m) and angle (deg), as Scan.FrameSet takes them.
    private var frameArguments: [Float] {
        let s = settings
        return [Float(s.frameCenterXNm * 1e-9), Float(s.frameCenterYNm * 1e-9), Float(s.frameSizeNm * 1e-9), Float(s.frameHeightNm * 1e-9), Float(s.frameAngleDeg)]
    }

    /// Reads the buffer, frame and speed back; true when they are what the settings ask for.
    /// With `report`, a difference throws `.rejected` naming it. Keeps the controller's line time.
    private func configurationMatches(_ port: any ByteStreamTransport, _ sink: any RecordSink, report: Bool = false) throws -> Bool {
        let s = settings
        let buffer = try call(port, sink, "Scan.BufferGet") { (r) throws(NanonisWireError) in
            let n = try r.count("the number of channels", limit: 128)
            return (channels: try r.int32Array(count: n, "the channel indexes"), pixels: Int(try r.int32("the pixels")), lines: Int(try r.int32("the lines")))
        }.value
        let frame = try call(port, sink, "Scan.FrameGet") { (r) throws(NanonisWireError) in
            [try r.float32("center X"), try r.float32("center Y"), try r.float32("width"), try r.float32("height"), try r.float32("angle")]
        }.value
        let speed = try call(port, sink, "Scan.SpeedGet") { (r) throws(NanonisWireError) in
            (forward: try r.float32("the forward speed"), backward: try r.float32("the backward speed"), forwardTime: try r.float32("the forward time per line"),
             backwardTime: try r.float32("the backward time per line"), keep: try r.uint16("the kept parameter"), ratio: try r.float32("the speed ratio"))
        }.value
        func close(_ a: Float, _ b: Float) -> Bool { abs(a - b) <= 1e-4 * max(abs(a), abs(b)) + 1e-12 }
        var differences: [String] = []
        if buffer.channels != s.channels { differences.append("channels \(buffer.channels.map(String.init).joined(separator: ",")) (asked \(s.channels.map(String.init).joined(separator: ",")))") }
        if buffer.pixels != s.pixels { differences.append("\(buffer.pixels) pixels (asked \(s.pixels))") }
        if buffer.lines != s.lines { differences.append("\(buffer.lines) lines (asked \(s.lines))") }
        let wanted = frameArguments
        let frameNames = ["center X", "center Y", "width", "height", "angle"]
        for i in 0..<5 where !close(frame[i], wanted[i]) { differences.append("frame \(frameNames[i]) \(frame[i]) (asked \(wanted[i]))") }
        if !close(speed.forward, Float(s.speedNmPerS * 1e-9)) { differences.append("forward speed \(speed.forward) m/s (asked \(Float(s.speedNmPerS * 1e-9)))") }
        if report && !differences.isEmpty {
            throw InstrumentError(.rejected, device: name, "the controller did not take the scan configuration: it has \(differences.joined(separator: "; ")); check the scan module's limits")
        }
        if differences.isEmpty && speed.forwardTime > 0 && speed.backwardTime > 0 {
            linePeriodNs = Int64((Double(speed.forwardTime) + Double(speed.backwardTime)) * 1e9)
        }
        return differences.isEmpty
    }

    private func scanRunning(_ port: any ByteStreamTransport, _ sink: any RecordSink) throws -> Bool {
        try call(port, sink, "Scan.StatusGet") { (r) throws(NanonisWireError) in try r.uint32("the scan status") }.value != 0
    }

    private func waitUntilStopped(_ port: any ByteStreamTransport, _ sink: any RecordSink) throws {
        let deadline = sink.clock.now().advanced(byNanoseconds: replyTimeoutNs)
        while try scanRunning(port, sink) {
            guard sink.clock.now() < deadline else {
                throw InstrumentError(.rejected, device: name, "the scan did not stop within \(settings.replyTimeoutMs) ms of Scan.Action stop")
            }
            try readSome(port, timeoutNs: 20_000_000)
        }
    }

    @discardableResult
    private func action(_ port: any ByteStreamTransport, _ sink: any RecordSink, code: UInt16, up: Bool) throws -> (sent: HostInstant, received: HostInstant) {
        var body = NanonisBodyWriter()
        body.uint16(code)
        body.uint32(up ? 1 : 0)
        let (_, sent, received) = try call(port, sink, "Scan.Action", body: body) { (_) throws(NanonisWireError) in () }
        return (sent, received)
    }

    // MARK: Signals

    private func readSignals(_ port: any ByteStreamTransport, _ sink: any RecordSink) throws {
        guard let stream = signalsStream else { return }
        var body = NanonisBodyWriter()
        body.int32Array(settings.signals)
        body.uint32(0)  // do not wait for newest data
        let n = settings.signals.count
        let (values, sent, received) = try call(port, sink, "Signals.ValsGet", body: body) { (r) throws(NanonisWireError) in
            let count = try r.count("the number of values", limit: 128)
            guard count == n else { throw NanonisWireError("\(count) values for the \(n) signals asked") }
            return try r.float32Array(count: count, "the signal values")
        }
        for i in 0..<n { signalValues[i] = Double(values[i]) }
        let stamp = HostInstant.bracketMidpoint(sent: sent, received: received).instant
        signalValues.withUnsafeBytes { sink.push(stream: stream, hostTime: stamp, deviceTime: nil, payload: $0) }
    }

    // MARK: Lines and frames

    /// Records the lines from `progress.nextLine` through `last` (scan order), which the
    /// controller reported finished at `observed`.
    private func collectLines(through last: Int, observed: HostInstant, _ progress: inout FrameProgress, _ port: any ByteStreamTransport, _ sink: any RecordSink) throws {
        let s = settings
        guard last >= 0, last < s.lines else {
            throw InstrumentError(.protocolViolation, device: name, "the controller reported line \(last) of a \(s.lines)-line frame; was the buffer changed at the controller? Reconnecting to configure it again")
        }
        if last < progress.nextLine {
            // Line numbers went back: the next frame began before this one's last lines were
            // reported. Read what is left of them, then record the frame.
            let lost = try recoverLastLines(&progress, nextFrameThrough: last, port, sink)
            let previousEnd = progress.lastLineEnd
            try endFollowing(progress, port, sink, reason: "the controller started a new frame", at: observed, grab: false, lost: lost)
            progress = FrameProgress(number: takeFrameNumber(), start: nil, lastLineEnd: previousEnd)
        }
        try grabAll(port, sink)
        if progress.up == nil { progress.up = scanUp }
        let first = progress.nextLine
        var incomplete = 0
        for k in first...last {
            // The line's start: the previous line's end, unless lines were missed, then counted
            // back from this report by the controller's line time.
            var start = observed.advanced(byNanoseconds: -Int64(last - k + 1) * linePeriodNs)
            if let end = progress.lastLineEnd, end > start { start = end }
            if progress.start == nil { progress.start = start }
            let end = k == last ? observed : start.advanced(byNanoseconds: linePeriodNs)
            if pushLine(k, of: progress, start: start, end: end, sink) { incomplete += 1 }
            progress.lastLineEnd = end
        }
        if incomplete > 0 {
            sink.event(Event(kind: .alarm, source: name, hostTime: observed, message: "\(incomplete) of lines \(first)…\(last) of frame \(progress.number) have unscanned (NaN) pixels",
                             values: ["frame": .integer(Int64(progress.number)), "lines": .integer(Int64(incomplete))]))
        }
        progress.nextLine = last + 1
        if progress.nextLine == s.lines {
            pushFrame(progress, sink)
            sink.event(Event(kind: .stateChange, source: name, hostTime: observed, message: "frame \(progress.number) complete (\(s.lines) lines, \(scanUp ? "up" : "down"))",
                             values: ["state": .string("frame_complete"), "frame": .integer(Int64(progress.number)), "lines": .integer(Int64(s.lines))]))
            progress = FrameProgress(number: takeFrameNumber(), start: nil, lastLineEnd: observed)
        }
    }

    /// Pushes line `k` (scan order) of the frame `progress` follows, from `frameStore`; true when
    /// some of its pixels are NaN (not scanned).
    private func pushLine(_ k: Int, of progress: FrameProgress, start: HostInstant, end: HostInstant, _ sink: any RecordSink) -> Bool {
        let p = settings.pixels
        let l = settings.lines
        let up = progress.up ?? scanUp
        let row = up ? l - 1 - k : k
        lineRecord[0] = Float(k)
        lineRecord[1] = Float(row)
        lineRecord[2] = up ? 1 : 0
        lineRecord[3] = Float(progress.number)
        lineRecord[4] = Float(max(0, end.seconds(since: start)))
        for i in 5..<p { lineRecord[i] = .nan }
        var hasNaN = false
        for ch in 0..<settings.channels.count {
            for d in 0..<2 {
                let source = ((ch * 2 + d) * l + row) * p
                let target = (1 + 2 * ch + d) * p
                for i in 0..<p {
                    let v = frameStore[source + i]
                    if v.isNaN { hasNaN = true }
                    lineRecord[target + i] = v
                }
            }
        }
        lineRecord.withUnsafeBytes { sink.push(stream: lineStream, hostTime: start, deviceTime: nil, payload: $0) }
        linesRecorded += 1
        return hasNaN
    }

    /// The next frame has reached its line `reached`, and lines `progress.nextLine`… of this
    /// frame were never reported: grabs into the spare buffer and records those whose rows the
    /// next frame cannot have reached yet (same direction, beyond its current line) and that
    /// hold data (a controller may clear its buffer at a new frame). Returns how many are lost.
    private func recoverLastLines(_ progress: inout FrameProgress, nextFrameThrough reached: Int, _ port: any ByteStreamTransport, _ sink: any RecordSink) throws -> Int {
        let l = settings.lines
        let missing = l - progress.nextLine
        guard let up = progress.up, missing > 0 else { return missing }
        if spareStore.count != frameStore.count { spareStore = [Float](repeating: .nan, count: frameStore.count) }
        try grabAll(port, sink, spare: true)
        guard scanUp == up else { return missing }  // a bouncy scan came back over these rows
        let p = settings.pixels
        var recovered = 0
        let first = progress.nextLine
        for k in first..<l where k > reached + 1 {
            let row = up ? l - 1 - k : k
            var complete = true
            for plane in 0..<(2 * settings.channels.count) where complete {
                let base = (plane * l + row) * p
                complete = !spareStore[base..<base + p].contains { $0.isNaN }
            }
            guard complete else { continue }
            for plane in 0..<(2 * settings.channels.count) {
                let base = (plane * l + row) * p
                frameStore.replaceSubrange(base..<base + p, with: spareStore[base..<base + p])
            }
            let start = (progress.lastLineEnd ?? sink.clock.now()).advanced(byNanoseconds: Int64(k - first) * linePeriodNs)
            _ = pushLine(k, of: progress, start: start, end: start.advanced(byNanoseconds: linePeriodNs), sink)
            recovered += 1
        }
        if recovered > 0 { progress.lastLineEnd = progress.lastLineEnd?.advanced(byNanoseconds: Int64(l - first) * linePeriodNs) }
        return missing - recovered
    }

    /// Stops following the current frame: a frame with recorded lines is grabbed once more
    /// (when `grab`) and recorded with whatever the controller has; `lost` lines of it could not
    /// be read (an alarm says so). The driver goes idle unless a new frame follows (the caller
    /// sets the phase).
    private func endFollowing(_ progress: FrameProgress, _ port: any ByteStreamTransport, _ sink: any RecordSink, reason: String, at time: HostInstant, grab: Bool = true, lost: Int = 0) throws {
        phase = .idle
        guard progress.nextLine > 0 else {
            sink.event(Event(kind: .stateChange, source: name, hostTime: time, message: "\(reason)", values: ["state": .string("idle")]))
            return
        }
        if grab { try grabAll(port, sink) }
        pushFrame(progress, sink)
        if lost > 0 {
            linesLost += lost
            sink.event(Event(kind: .alarm, source: name, hostTime: time, message: "\(reason) before \(lost) of the last lines of frame \(progress.number) were read; they are lost (NaN in the frame record)",
                             values: ["frame": .integer(Int64(progress.number)), "lines_lost": .integer(Int64(lost))]))
        }
        sink.event(Event(kind: .stateChange, source: name, hostTime: time, message: "\(reason) at line \(progress.nextLine) of frame \(progress.number); the frame is recorded",
                         values: ["state": .string("idle"), "frame": .integer(Int64(progress.number)), "lines": .integer(Int64(progress.nextLine))]))
    }

    private func pushFrame(_ progress: FrameProgress, _ sink: any RecordSink) {
        let start = progress.start ?? progress.lastLineEnd ?? sink.clock.now()
        frameStore.withUnsafeBytes { sink.push(stream: frameStream, hostTime: start, deviceTime: nil, payload: $0) }
        framesRecorded += 1
    }

    /// Scan.FrameDataGrab of every channel, forward and backward, into `frameStore`; notes the
    /// scan direction the controller reports.
    private func grabAll(_ port: any ByteStreamTransport, _ sink: any RecordSink, spare: Bool = false) throws {
        let s = settings
        let plane = s.lines * s.pixels
        for (ch, index) in s.channels.enumerated() {
            for d in 0..<2 {
                var body = NanonisBodyWriter()
                body.uint32(UInt32(index))
                body.uint32(d == 0 ? 1 : 0)  // 1 forward, 0 backward
                let offset = (ch * 2 + d) * plane
                func grab(_ store: UnsafeMutableBufferPointer<Float>) throws -> (Int, Int, UInt32) {
                    try call(port, sink, "Scan.FrameDataGrab", body: body) { (r) throws(NanonisWireError) in
                        _ = try r.string("the channel name")
                        let (rows, columns) = try r.float32Matrix(into: UnsafeMutableBufferPointer(rebasing: store[offset..<offset + plane]), "the scan data")
                        return (rows, columns, try r.uint32("the scan direction"))
                    }.value
                }
                let shape = spare ? try spareStore.withUnsafeMutableBufferPointer { try grab($0) } : try frameStore.withUnsafeMutableBufferPointer { try grab($0) }
                guard shape.0 == s.lines, shape.1 == s.pixels else {
                    throw InstrumentError(.protocolViolation, device: name, "Scan.FrameDataGrab of signal \(index) returned \(shape.0) × \(shape.1) values; the driver configured \(s.lines) lines × \(s.pixels) pixels. Was the buffer changed at the controller? Reconnecting to configure it again")
                }
                scanUp = shape.2 == 1
            }
        }
    }

    // MARK: Requests

    private func byteStream(_ link: DeviceLink) throws -> any ByteStreamTransport {
        guard case .byteStream(let port) = link else {
            throw InstrumentError(.unsupported, device: name, "the Nanonis interface needs a byte-stream transport (TCP)")
        }
        return port
    }

    /// Sends `command` with `body`, waits for its reply (up to `reply_timeout_ms`, plus
    /// `extraWaitNs` for commands that wait at the controller), checks it answers this command,
    /// decodes its values with `decode` and its error part. Every request goes through here.
    ///
    /// A reply is a round trip of the link, reported to the sink (`latency`), except for waits.
    private func call<T>(
        _ port: any ByteStreamTransport, _ sink: any RecordSink, _ command: String, body: NanonisBodyWriter = NanonisBodyWriter(),
        extraWaitNs: Int64 = 0, latency: Bool = true, decode: (inout NanonisBodyReader) throws(NanonisWireError) -> T
    ) throws -> (value: T, sent: HostInstant, received: HostInstant) {
        let request: [UInt8]
        do {
            request = try NanonisProtocol.request(command, body: body.bytes)
        } catch {
            throw InstrumentError(.unsupported, device: name, "cannot encode \(command): \(error)")
        }
        if assembler.buffered > 0 {
            throw InstrumentError(.protocolViolation, device: name, "\(assembler.buffered) bytes came from the controller unasked before \(command); the connection is out of step")
        }
        let sent = sink.clock.now()
        try request.withUnsafeBytes { try port.write($0, timeout: .seconds(2)) }
        let deadline = sent.advanced(byNanoseconds: replyTimeoutNs + extraWaitNs)
        while true {
            let reply: (header: NanonisProtocol.ResponseHeader, body: ArraySlice<UInt8>)?
            do {
                reply = try assembler.next()
            } catch {
                throw InstrumentError(.protocolViolation, device: name, "while waiting for the reply to \(command): \(error); reconnecting")
            }
            if let reply {
                guard reply.header.command == command else {
                    throw InstrumentError(.protocolViolation, device: name, "a reply to \(reply.header.command) came while waiting for the reply to \(command); the connection is out of step")
                }
                let received = lastReadTime
                if latency { sink.roundTrip(sent: sent, received: received) }
                let value = try NanonisProtocol.decodeReply(reply.body, command: command, device: name, decode)
                return (value, sent, received)
            }
            let now = sink.clock.now()
            guard now < deadline else {
                throw InstrumentError(.replyTimedOut, device: name, "no reply to \(command) within \((replyTimeoutNs + extraWaitNs) / 1_000_000) ms; is the Nanonis software running with its TCP interface on this port?")
            }
            try readSome(port, timeoutNs: min(deadline.nanoseconds - now.nanoseconds, 100_000_000))
        }
    }

    /// One read of the link into the assembler.
    private func readSome(_ port: any ByteStreamTransport, timeoutNs: Int64) throws {
        let read = try readBuffer.withUnsafeMutableBytes { try port.read(into: $0, timeout: .nanoseconds(max(1_000_000, timeoutNs))) }
        guard read.count > 0 else { return }
        lastReadTime = read.hostTime
        readBuffer.withUnsafeBytes { assembler.append(UnsafeRawBufferPointer(rebasing: $0[0..<read.count])) }
    }
}

extension Duration {
    fileprivate var nanosecondsValue: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
