import Foundation
import OperandoCore
import OperandoVirtualCell

/// A Nanonis SPM controller's TCP programming interface, from the controller's side, over one
/// byte stream (a TCP connection, or an in-memory link in tests), scanning a simulated battery
/// electrode (`NanonisSurface`) that follows the shared virtual cell.
///
/// Written from TCPProtocol_SPM.pdf and the official nanonis-spm client's argument lists,
/// independently of NanonisDriver's codec. Functions served (arguments and return values as the
/// PDF lists them, the error part after them): Bias.Set/Get; Scan.Action, StatusGet,
/// WaitEndOfScan, WaitEndOfLine, FrameSet/Get, BufferSet/Get, PropsSet/Get (the client's
/// layout, with Autopaste), SpeedSet/Get, FrameDataGrab, XYPosGet; Signals.NamesGet, ValGet,
/// ValsGet; ZCtrl.SetpntSet/Get; Util.VersionGet.
///
/// Choices where the public material is silent:
/// - An unknown command is answered with the error part alone: status 1 and "Unknown command
///   <name>". A known command with arguments it cannot take (a short or long body, an index out
///   of range, a value out of bounds) is answered with its return values zeroed and the error:
///   status 1 and a description naming the function and the argument, as the real controller
///   describes errors. Nothing changes when a command is refused.
/// - A request whose body size is negative or over 16 MiB ends the connection: no later byte
///   can be framed.
/// - A request without the send-response-back flag is executed and not answered.
/// - Scan.WaitEndOfLine reports the first pass end (or arrival at the start point) after the
///   request: its line number counts lines in scan order from 0; Scan.WaitEndOfScan the first
///   frame end. Both hold later requests until they answer, as one connection serialises commands.
/// - Scan.StatusGet is 1 from Scan.Action start until the scan stops (paused included). Scan.BufferSet
///   is refused while scanning; Scan.FrameSet is taken at once (piezo creep follows the jump).
/// - The scan is continuous by default (Scan.PropsSet can turn it off). Scan.Action start clears
///   the frame buffer (unscanned lines are NaN); a continuous scan's next frame overwrites the
///   previous one line by line.
/// - Signal list (Signals.NamesGet, 128 signals): 0 Current (A), 1–7 Input 2–8 (V), 24 Bias (V),
///   25–29 Output 2–6 (V), 30 Z (m), 31 X (m), 32 Y (m), 72–75 OC M1 Freq. Shift (Hz),
///   Amplitude (m), Phase (deg), Excitation (V); the rest "Internal N (V)", reading noise around 0.
///
/// Physics: topography Z is the surface height (particles swelling with state of charge, grain
/// grooves, an SEI growing with cycles) plus thermal drift (lateral and vertical, seeded),
/// piezo creep after a frame change (3 % of the jump, decaying over 20 s) and 0.15 nm of noise.
/// Current is the conductive-AFM current at the bias (particles conduct, the matrix barely; the
/// SEI attenuates it as exp(−t / 1.2 nm)). Amplitude follows the local slope along the scan;
/// phase distinguishes particle from matrix and shifts with the SEI.
///
/// Threading: `serve` runs on one thread; the other methods may be called from any thread.
public final class NanonisSimulator: @unchecked Sendable {
    public let cell: VirtualCell
    private let clock: any HostClock
    public let surface: NanonisSurface
    private let lock = NSLock()
    private var noise: NoiseSource
    private var framer = SimRequestFramer()
    private var pending: PendingWait?
    private var silent = false

    // Controller state.
    private var bias: Float = 0.2
    private var setpoint: Float = 5e-9
    /// Tip position for Follow Me (m), when not scanning.
    private var tip: (x: Double, y: Double) = (0, 0)
    private var bufferChannels: [Int32] = [30, 0, 74]
    private var frame = (centerX: Float(0), centerY: Float(0), width: Float(5e-6), height: Float(5e-6), angle: Float(0))
    private var speed = (forward: 1e-5, backward: 1e-5, keepTime: false)
    private var props = (autosave: UInt32(2), seriesName: "operando", comment: "", autopaste: UInt32(2))
    private var engine: NanonisScanEngine
    /// Piezo creep: the last frame jump (m) and when it happened.
    private var creep = (dx: 0.0, dy: 0.0, at: HostInstant(nanoseconds: 0))
    private let drift: (x: Double, y: Double, z: Double)
    private let start: HostInstant
    /// The cell's state, read once per pass rather than per pixel.
    private var cellState = (soc: 0.0, cycle: 0)

    public static let productLine = "Nanonis SPM Control Software"
    public static let version = "Generic 5 (simulated)"
    public static let hostRelease: UInt32 = 13520
    public static let rtRelease: UInt32 = 13520
    /// The largest scan buffer (values over all channels and both directions): 32 M, 128 MiB.
    public static let maxBufferValues = 32 << 20
    public static let minPassSeconds = 1e-3
    public static let creepFraction = 0.03
    public static let creepSeconds = 20.0

    private struct PendingWait {
        enum Kind { case endOfLine, endOfScan }
        var kind: Kind
        var nameField: [UInt8]
        var answer: Bool
        var deadline: HostInstant?
        /// The engine's event (or scan end) count when the request came.
        var mark: Int
    }

    /// The 128 signal names the controller offers (Signals.NamesGet).
    public static let signalNames: [String] = (0..<128).map { i in
        switch i {
        case 0: "Current (A)"
        case 1...7: "Input \(i + 1) (V)"
        case 24: "Bias (V)"
        case 25...29: "Output \(i - 23) (V)"
        case 30: "Z (m)"
        case 31: "X (m)"
        case 32: "Y (m)"
        case 72: "OC M1 Freq. Shift (Hz)"
        case 73: "OC M1 Amplitude (m)"
        case 74: "OC M1 Phase (deg)"
        case 75: "OC M1 Excitation (V)"
        default: "Internal \(i) (V)"
        }
    }

    /// A controller scanning the surface generated from `seed`, timed by `clock`, its sample
    /// following `cell`. Noise, drift and the surface are reproducible from `seed`.
    public init(cell: VirtualCell, clock: any HostClock, seed: UInt64 = 1) {
        self.cell = cell
        self.clock = clock
        surface = NanonisSurface(seed: seed)
        noise = NoiseSource(seed: seed &+ 17)
        var r = SeededRandom(seed: seed &+ 99)
        func signed(_ scale: Double) -> Double { (r.uniform() * 2 - 1) * scale }
        drift = (signed(0.2e-9), signed(0.2e-9), signed(0.05e-9))
        start = clock.now()
        engine = NanonisScanEngine(channels: 3, pixels: 64, lines: 64, forwardSeconds: 0.5, backwardSeconds: 0.5)
        updateTimes()
    }

    // MARK: Serving

    /// Serves the controller end of `link` until `shouldStop` returns true or the link goes away
    /// (a read or write throws) or the client sends a request that cannot be framed. The
    /// controller keeps its state (a running scan goes on) for the next client.
    public func serve(_ link: any ByteStreamTransport, shouldStop: () -> Bool) {
        withLock {
            framer = SimRequestFramer()
            pending = nil
        }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !shouldStop() {
            do {
                let read = try buffer.withUnsafeMutableBytes { try link.read(into: $0, timeout: pollInterval()) }
                let out = try read.count > 0 ? receive(buffer[0..<read.count]) : poll()
                if !out.isEmpty { try out.withUnsafeBytes { try link.write($0, timeout: .seconds(5)) } }
            } catch {
                return
            }
        }
    }

    /// Feeds bytes from the client as if they arrived now (by the injected clock); returns the
    /// responses due (each a whole message: header, values, error part). Throws when the request
    /// stream cannot be framed any more.
    public func receive<C: Collection>(_ bytes: C) throws -> [UInt8] where C.Element == UInt8 {
        try withLock {
            framer.push(ArraySlice(bytes))
            return try answerDue()
        }
    }

    /// Moves the scan to now and returns the answers of waits that are due.
    public func poll() -> [UInt8] {
        withLock { (try? answerDue()) ?? [] }
    }

    /// Fault injection: while silent, requests are taken and executed but never answered.
    public func setSilent(_ value: Bool) { withLock { silent = value } }

    /// How long `serve` may block in a read: until the next scan event when a wait is pending.
    private func pollInterval() -> Duration {
        withLock {
            guard pending != nil else { return .milliseconds(engine.isRunning ? 10 : 50) }
            var ns: Int64 = 5_000_000
            if let t = engine.nextEventTime { ns = min(ns, max(200_000, t.nanoseconds - clock.now().nanoseconds)) }
            if let d = pending?.deadline { ns = min(ns, max(200_000, d.nanoseconds - clock.now().nanoseconds)) }
            return .nanoseconds(ns)
        }
    }

    private func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    /// Answers a pending wait that is due, then the requests queued behind it.
    private func answerDue() throws -> [UInt8] {
        var out: [UInt8] = []
        advance()
        if let wait = pending, let message = waitAnswer(wait) {
            pending = nil
            if wait.answer && !silent { out += message }
        }
        while pending == nil, let request = try framer.next() {
            let message = handle(request)
            if request.wantsResponse && !silent, let message { out += message }
        }
        return out
    }

    // MARK: Dispatch

    /// Executes one request; returns its response, or nil when it became a pending wait.
    private func handle(_ request: SimRequest) -> [UInt8]? {
        var args = SimArguments(request.body)
        var reply = SimReply()
        let name = request.name
        guard let defaults = Self.defaultReplies[name] else {
            return SimReply().message(nameField: request.nameField, errorStatus: 1, errorText: "Unknown command \(name)")
        }
        do {
            switch name {
            case "Scan.WaitEndOfLine", "Scan.WaitEndOfScan":
                let timeout = try args.int("Timeout (ms)")
                try args.end(name)
                let now = clock.now()
                let isLine = name == "Scan.WaitEndOfLine"
                pending = PendingWait(
                    kind: isLine ? .endOfLine : .endOfScan, nameField: request.nameField, answer: request.wantsResponse,
                    deadline: timeout < 0 ? nil : now.advanced(byNanoseconds: Int64(timeout) * 1_000_000),
                    mark: isLine ? engine.eventCount : engine.scansEnded)
                if let message = waitAnswer(pending!) {
                    pending = nil
                    return message
                }
                return nil
            default:
                try execute(name, &args, &reply)
            }
        } catch let fault as SimArgumentFault {
            var zeroed = SimReply()
            defaults(&zeroed)
            return zeroed.message(nameField: request.nameField, errorStatus: 1, errorText: "\(name): \(fault.description)")
        } catch {
            return SimReply().message(nameField: request.nameField, errorStatus: 1, errorText: "\(name): \(error)")
        }
        return reply.message(nameField: request.nameField)
    }

    /// Each function's return values zeroed, sent before the error part when it is refused.
    private static let defaultReplies: [String: @Sendable (inout SimReply) -> Void] = [
        "Bias.Set": { _ in }, "Bias.Get": { $0.f32(0) },
        "Scan.Action": { _ in }, "Scan.StatusGet": { $0.u32(0) },
        "Scan.WaitEndOfScan": { $0.u32(0); $0.u32(0) }, "Scan.WaitEndOfLine": { $0.u32(0); $0.int(0); $0.u16(0); $0.int(0) },
        "Scan.FrameSet": { _ in }, "Scan.FrameGet": { r in for _ in 0..<5 { r.f32(0) } },
        "Scan.BufferSet": { _ in }, "Scan.BufferGet": { $0.int(0); $0.int(0); $0.int(0) },
        "Scan.PropsSet": { _ in },
        "Scan.PropsGet": { r in r.u32(0); r.u32(0); r.u32(0); r.text(""); r.text(""); r.texts([]); r.int(0); r.int(0); r.int(0); r.u32(0) },
        "Scan.SpeedSet": { _ in }, "Scan.SpeedGet": { r in for _ in 0..<4 { r.f32(0) }; r.u16(0); r.f32(0) },
        "Scan.FrameDataGrab": { r in r.text(""); r.int(0); r.int(0); r.u32(0) },
        "Scan.XYPosGet": { $0.f32(0); $0.f32(0) },
        "Signals.NamesGet": { $0.texts([]) }, "Signals.ValGet": { $0.f32(0) }, "Signals.ValsGet": { $0.int(0) },
        "ZCtrl.SetpntSet": { _ in }, "ZCtrl.SetpntGet": { $0.f32(0) },
        "Util.VersionGet": { r in r.text(""); r.text(""); r.u32(0); r.u32(0) },
        "FolMe.XYPosSet": { _ in },
        "FolMe.XYPosGet": { r in r.f64(0); r.f64(0) },
    ]

    private func execute(_ name: String, _ args: inout SimArguments, _ reply: inout SimReply) throws {
        let now = clock.now()
        switch name {
        case "Bias.Set":
            let v = try args.f32("Bias value (V)")
            try args.end(name)
            guard v.isFinite && abs(v) <= 10 else { throw SimArgumentFault(description: "Bias value \(v) V is outside the ±10 V range") }
            bias = v
        case "Bias.Get":
            try args.end(name)
            reply.f32(bias)
        case "Scan.Action":
            let action = try args.u16("Scan action")
            let direction = try args.u32("Scan direction")
            try args.end(name)
            guard action <= 6 else { throw SimArgumentFault(description: "Scan action \(action) is not 0…6") }
            guard direction <= 1 else { throw SimArgumentFault(description: "Scan direction \(direction) is not 0 (down) or 1 (up)") }
            switch action {
            case 0: engine.start(at: now, up: direction == 1)
            case 1, 6: engine.stop()
            case 2, 4: engine.pause(at: now)
            default: engine.resume(at: now)
            }
        case "Scan.StatusGet":
            try args.end(name)
            reply.u32(engine.isRunning ? 1 : 0)
        case "Scan.FrameSet":
            let v = [try args.f32("Center X (m)"), try args.f32("Center Y (m)"), try args.f32("Width (m)"), try args.f32("Height (m)"), try args.f32("Angle (deg)")]
            try args.end(name)
            guard v.allSatisfy(\.isFinite) else { throw SimArgumentFault(description: "the frame values must be finite") }
            guard v[2] > 0 && v[2] <= 100e-6 && v[3] > 0 && v[3] <= 100e-6 else {
                throw SimArgumentFault(description: "Width and Height must be in (0, 100 µm], the scanner's range")
            }
            guard abs(v[0]) <= 100e-6 && abs(v[1]) <= 100e-6 else { throw SimArgumentFault(description: "the frame centre is outside the scanner's ±100 µm") }
            creep = (Double(v[0] - frame.centerX), Double(v[1] - frame.centerY), now)
            frame = (v[0], v[1], v[2], v[3], v[4])
            updateTimes()
        case "Scan.FrameGet":
            try args.end(name)
            for v in [frame.centerX, frame.centerY, frame.width, frame.height, frame.angle] { reply.f32(v) }
        case "Scan.BufferSet":
            let n = Int(try args.int("Number of channels"))
            guard (1...128).contains(n) else { throw SimArgumentFault(description: "Number of channels \(n) is not 1…128") }
            let indexes = try args.ints(n, "Channel indexes")
            let pixelsAsked = try args.int("Pixels")
            let linesAsked = try args.int("Lines")
            try args.end(name)
            guard indexes.allSatisfy({ (0...127).contains($0) }) else { throw SimArgumentFault(description: "channel indexes must be 0…127") }
            guard Set(indexes).count == indexes.count else { throw SimArgumentFault(description: "a channel index is repeated") }
            guard !engine.isRunning else { throw SimArgumentFault(description: "the scan buffer cannot change while scanning; stop the scan first") }
            // Pixels are coerced to the closest multiple of 16; lines ≤ 0 keep the pixels' ratio.
            let pixels = min(8192, max(16, Int((Double(pixelsAsked) / 16).rounded()) * 16))
            let lines = linesAsked <= 0 ? pixels : min(8192, Int(linesAsked))
            guard n * 2 * lines * pixels <= Self.maxBufferValues else {
                throw SimArgumentFault(description: "\(n) channels × 2 directions × \(lines) lines × \(pixels) pixels exceed the scan buffer (\(Self.maxBufferValues) values)")
            }
            bufferChannels = indexes
            engine.reshape(channels: n, pixels: pixels, lines: lines)
        case "Scan.BufferGet":
            try args.end(name)
            reply.int(Int32(bufferChannels.count))
            for i in bufferChannels { reply.int(i) }
            reply.int(Int32(engine.pixels))
            reply.int(Int32(engine.lines))
        case "Scan.PropsSet":
            let continuous = try args.u32("Continuous scan")
            let bouncy = try args.u32("Bouncy scan")
            let autosave = try args.u32("Autosave")
            let series = try args.text("Series name")
            let comment = try args.text("Comment")
            _ = try args.texts("Modules names")
            let autopaste = args.left >= 4 ? try args.u32("Autopaste") : 0
            try args.end(name)
            guard continuous <= 2, bouncy <= 2, autosave <= 3, autopaste <= 3 else { throw SimArgumentFault(description: "a property is out of range") }
            if continuous != 0 { engine.continuous = continuous == 1 }
            if bouncy != 0 { engine.bouncy = bouncy == 1 }
            if autosave != 0 { props.autosave = autosave - 1 }
            if autopaste != 0 { props.autopaste = autopaste - 1 }
            props.seriesName = series
            props.comment = comment
        case "Scan.PropsGet":
            try args.end(name)
            reply.u32(engine.continuous ? 1 : 0)
            reply.u32(engine.bouncy ? 1 : 0)
            reply.u32(props.autosave)
            reply.text(props.seriesName)
            reply.text(props.comment)
            reply.texts([])  // modules names
            reply.int(0)  // number of parameters per module: none
            reply.int(0)  // parameters: 0 rows
            reply.int(0)  // 0 columns
            reply.u32(props.autopaste)
        case "Scan.SpeedSet":
            let forward = try args.f32("Forward linear speed (m/s)")
            let backward = try args.f32("Backward linear speed (m/s)")
            let forwardTime = try args.f32("Forward time per line (s)")
            let backwardTime = try args.f32("Backward time per line (s)")
            let keep = try args.u16("Keep parameter constant")
            let ratio = try args.f32("Speed ratio")
            try args.end(name)
            guard keep <= 2 else { throw SimArgumentFault(description: "Keep parameter constant \(keep) is not 0, 1 or 2") }
            let keepTime = keep == 0 ? speed.keepTime : keep == 2
            if keepTime {
                guard forwardTime > 0 && backwardTime > 0 && forwardTime.isFinite && backwardTime.isFinite && max(forwardTime, backwardTime) <= 1e5 else {
                    throw SimArgumentFault(description: "times per line must be in (0, 100000] s")
                }
                speed = (Double(frame.width) / Double(forwardTime), Double(frame.width) / Double(backwardTime), true)
            } else {
                guard forward >= 1e-12 && forward.isFinite && forward <= 1e-3 else { throw SimArgumentFault(description: "Forward linear speed \(forward) m/s is outside (0, 1 mm/s]") }
                let back = backward > 0 && backward.isFinite ? Double(backward) : Double(forward) * Double(ratio > 0 && ratio.isFinite ? ratio : 1)
                guard back >= 1e-12 && back <= Double(Float(1e-3)) else { throw SimArgumentFault(description: "Backward linear speed \(back) m/s is outside (0, 1 mm/s]") }
                speed = (Double(forward), back, false)
            }
            updateTimes()
        case "Scan.SpeedGet":
            try args.end(name)
            reply.f32(Float(speed.forward))
            reply.f32(Float(speed.backward))
            reply.f32(Float(engine.forwardSeconds))
            reply.f32(Float(engine.backwardSeconds))
            reply.u16(speed.keepTime ? 1 : 0)
            reply.f32(Float(speed.backward / speed.forward))
        case "Scan.FrameDataGrab":
            let channel = try args.u32("Channel index")
            let direction = try args.u32("Data direction")
            try args.end(name)
            guard let c = bufferChannels.firstIndex(of: Int32(clamping: channel)) else {
                throw SimArgumentFault(description: "Channel index \(channel) is not one of the acquired channels (\(bufferChannels.map(String.init).joined(separator: ",")))")
            }
            guard direction <= 1 else { throw SimArgumentFault(description: "Data direction \(direction) is not 0 (backward) or 1 (forward)") }
            reply.text(Self.signalNames[Int(channel)])
            reply.int(Int32(engine.lines))
            reply.int(Int32(engine.pixels))
            let plane = engine.lines * engine.pixels
            let base = (c * 2 + (direction == 1 ? 0 : 1)) * plane
            reply.f32s(engine.data[base..<base + plane])
            reply.u32(engine.up ? 1 : 0)
        case "Scan.XYPosGet":
            _ = try args.u32("Wait for newest data")
            try args.end(name)
            let p = tipPosition(at: now)
            reply.f32(Float(p.x))
            reply.f32(Float(p.y))
        case "Signals.NamesGet":
            try args.end(name)
            reply.texts(Self.signalNames)
        case "Signals.ValGet":
            let index = try args.int("Signal index")
            _ = try args.u32("Wait for newest data")
            try args.end(name)
            guard (0...127).contains(index) else { throw SimArgumentFault(description: "Signal index \(index) is not 0…127") }
            reply.f32(signalValues([index], at: now)[0])
        case "Signals.ValsGet":
            let n = Int(try args.int("Signals indexes size"))
            guard (0...128).contains(n) else { throw SimArgumentFault(description: "Signals indexes size \(n) is not 0…128") }
            let indexes = try args.ints(n, "Signals indexes")
            _ = try args.u32("Wait for newest data")
            try args.end(name)
            guard indexes.allSatisfy({ (0...127).contains($0) }) else { throw SimArgumentFault(description: "signal indexes must be 0…127") }
            reply.int(Int32(n))
            for v in signalValues(indexes, at: now) { reply.f32(v) }
        case "ZCtrl.SetpntSet":
            let v = try args.f32("Z-Controller setpoint")
            try args.end(name)
            guard v.isFinite else { throw SimArgumentFault(description: "the setpoint must be finite") }
            setpoint = v
        case "ZCtrl.SetpntGet":
            try args.end(name)
            reply.f32(setpoint)
        case "FolMe.XYPosSet":
            // X (m) f64, Y (m) f64, wait for the end of the move (u32).
            let x = try args.f64("X (m)")
            let y = try args.f64("Y (m)")
            _ = try args.u32("Wait end of move")
            try args.end(name)
            guard x.isFinite, y.isFinite, abs(x) <= 1e-4, abs(y) <= 1e-4 else {
                throw SimArgumentFault(description: "the position (\(x), \(y)) m is outside the ±100 µm piezo range")
            }
            tip = (x, y)
        case "FolMe.XYPosGet":
            // Wait for newest data (u32) → X (m), Y (m).
            _ = try args.u32("Wait for newest data")
            try args.end(name)
            reply.f64(tip.x)
            reply.f64(tip.y)
        case "Util.VersionGet":
            try args.end(name)
            reply.text(Self.productLine)
            reply.text(Self.version)
            reply.u32(Self.hostRelease)
            reply.u32(Self.rtRelease)
        default:
            throw SimArgumentFault(description: "not served")
        }
    }

    /// The answer of a pending wait, if it is due (an event after its mark, or its deadline).
    private func waitAnswer(_ wait: PendingWait) -> [UInt8]? {
        var reply = SimReply()
        switch wait.kind {
        case .endOfLine:
            if engine.eventCount > wait.mark, let e = engine.event(wait.mark) ?? engine.lastEvent {
                reply.u32(0)
                reply.int(e.line)
                reply.u16(e.movement)
                reply.int(1)
                return reply.message(nameField: wait.nameField)
            }
            guard let d = wait.deadline, clock.now() >= d else { return nil }
            let last = engine.lastEvent
            reply.u32(1)
            reply.int(last?.line ?? 0)
            reply.u16(last?.movement ?? 0)
            reply.int(1)
            return reply.message(nameField: wait.nameField)
        case .endOfScan:
            let ended = engine.scansEnded > wait.mark
            if !ended {
                guard let d = wait.deadline, clock.now() >= d else { return nil }
            }
            reply.u32(ended ? 0 : 1)
            reply.u32(0)  // no file was saved: an empty path
            return reply.message(nameField: wait.nameField)
        }
    }

    // MARK: Physics

    /// Pass times from the frame width and the speeds; no pass is shorter than 1 ms (a tiny frame
    /// at full speed must not make the engine spin through millions of lines).
    private func updateTimes() {
        engine.forwardSeconds = max(Self.minPassSeconds, Double(frame.width) / speed.forward)
        engine.backwardSeconds = max(Self.minPassSeconds, Double(frame.width) / speed.backward)
    }

    private func advance() {
        let now = clock.now()
        guard engine.isRunning else { return }
        var lastRow = -1
        var lastBackward = false
        let grid = (pixels: engine.pixels, lines: engine.lines)
        // The closure must not touch `engine`, which `advance` holds.
        engine.advance(to: now) { row, column, backward, t, out in
            if row != lastRow || backward != lastBackward {
                lastRow = row
                lastBackward = backward
                let s = cell.snapshot
                cellState = (s.stateOfCharge, s.cycle)
            }
            sample(row: row, column: column, backward: backward, at: t, grid: grid, into: &out)
        }
    }

    /// Scanner coordinates (m) of (row, column) of a frame of `grid` lines and pixels.
    private func position(row: Double, column: Double, grid: (pixels: Int, lines: Int)) -> (x: Double, y: Double) {
        let u = (column / Double(grid.pixels) - 0.5) * Double(frame.width)
        let v = (0.5 - row / Double(grid.lines)) * Double(frame.height)
        let a = Double(frame.angle) * Double.pi / 180  // positive: clockwise
        return (Double(frame.centerX) + u * cos(a) + v * sin(a), Double(frame.centerY) - u * sin(a) + v * cos(a))
    }

    private func tipPosition(at t: HostInstant) -> (x: Double, y: Double) {
        if let tip = engine.tip(at: t) { return position(row: Double(tip.row) + 0.5, column: tip.pixel, grid: (engine.pixels, engine.lines)) }
        return (Double(frame.centerX), Double(frame.centerY))
    }

    /// What the tip sees at scanner position (x, y) at `t`: creep and drift move the sample
    /// under the tip.
    private func probe(x: Double, y: Double, at t: HostInstant, pixels: Int) -> (point: NanonisSurface.Point, slope: Double, zOffset: Double) {
        let elapsed = t.seconds(since: start)
        let sinceJump = max(0, t.seconds(since: creep.at))
        let c = Self.creepFraction * exp(-sinceJump / Self.creepSeconds)
        let sx = x - drift.x * elapsed - creep.dx * c
        let sy = y - drift.y * elapsed - creep.dy * c
        let p = surface.point(x: sx, y: sy, stateOfCharge: cellState.soc, cycle: cellState.cycle)
        let step = Double(frame.width) / Double(pixels)
        let ahead = surface.point(x: sx + step * 0.5, y: sy, stateOfCharge: cellState.soc, cycle: cellState.cycle)
        return (p, (ahead.height - p.height) / (step * 0.5), drift.z * elapsed)
    }

    private func sample(row: Int, column: Int, backward: Bool, at t: HostInstant, grid: (pixels: Int, lines: Int), into out: inout [Float]) {
        let pos = position(row: Double(row) + 0.5, column: Double(column) + 0.5, grid: grid)
        let probed = probe(x: pos.x, y: pos.y, at: t, pixels: grid.pixels)
        for (i, index) in bufferChannels.enumerated() where i < out.count {
            out[i] = value(of: index, probed, backward: backward, x: pos.x, y: pos.y)
        }
    }

    private func value(of index: Int32, _ probed: (point: NanonisSurface.Point, slope: Double, zOffset: Double), backward: Bool, x: Double, y: Double) -> Float {
        let p = probed.point
        switch index {
        case 0:
            let conductance = (p.onParticle ? 2e-9 : 5e-11) * exp(-p.sei / 1.2e-9) * (1 + 0.5 * cellState.soc)
            return Float(Double(bias) * conductance + noise.gaussian() * 2e-12)
        case 24: return bias
        case 30: return Float(p.height + probed.zOffset + noise.gaussian() * 0.15e-9)
        case 31: return Float(x)
        case 32: return Float(y)
        case 72: return Float(-5 - 20 * max(0, probed.slope) + noise.gaussian() * 0.05)
        case 73:
            // The amplitude error follows the slope met along the scan direction.
            let met = backward ? -probed.slope : probed.slope
            return Float(Double(setpoint) + 0.4e-9 * met + noise.gaussian() * 0.02e-9)
        case 74: return Float(-90 + (p.onParticle ? 6 : -6) - 0.3 * p.sei * 1e9 + 4 * p.grainEdge + noise.gaussian() * 0.2)
        case 75: return Float(0.05 + 0.01 * abs(probed.slope) + noise.gaussian() * 1e-4)
        default: return Float(noise.gaussian() * 1e-4)
        }
    }

    private func signalValues(_ indexes: [Int32], at t: HostInstant) -> [Float] {
        let s = cell.snapshot
        cellState = (s.stateOfCharge, s.cycle)
        let pos = tipPosition(at: t)
        let probed = probe(x: pos.x, y: pos.y, at: t, pixels: engine.pixels)
        return indexes.map { value(of: $0, probed, backward: false, x: pos.x, y: pos.y) }
    }

    // MARK: Inspection (tests, operando-sim)

    /// The bias (V) and Z-controller setpoint as set.
    public var currentBias: Float { withLock { bias } }
    public var currentSetpoint: Float { withLock { setpoint } }
    /// Whether a scan is running (Scan.StatusGet), frames started and ended so far, and the line
    /// (scan order) being scanned now.
    public var scanState: (running: Bool, framesStarted: Int, framesEnded: Int, line: Int?) {
        withLock {
            advance()
            return (engine.isRunning, engine.framesStarted, engine.scansEnded, engine.currentLine)
        }
    }
}
