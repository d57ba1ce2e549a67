import OperandoCore

/// A scan, moved forward in time by the simulator: the tip's passes, the frame buffer they
/// fill, and the end-of-line events Scan.WaitEndOfLine reports.
///
/// - A scan starts by moving to the frame's start point (as long as one forward pass takes),
///   then scans `lines` lines, each a forward pass then a backward pass. Scanning up starts at
///   the bottom row (row `lines − 1`; row 0 is the frame's top, as Scan.FrameDataGrab returns it).
/// - Pixels are filled in packets of 16 as the tip passes them (the controller moves data from
///   its real-time engine in packets of 16); pixels not scanned yet are NaN. Backward data are
///   stored in the same left-to-right order as forward data.
/// - Each pass end is an event (line number in scan order from 0; movement 0 forward, 1
///   backward), and so is the arrival at the start point (movement 3).
/// - Scan.Action start clears the buffer (NaN). At the end of a frame: with `continuous`, the
///   tip moves back to the start point and the next frame begins (with `bouncy`, in the other
///   direction), overwriting the previous frame line by line, so a client has a whole frame's
///   time to read the last lines; otherwise the scan stops. Either way it counts as an end of scan.
struct NanonisScanEngine {
    struct LineEvent {
        var time: HostInstant
        var line: Int32
        var movement: UInt16
    }

    private enum Motion {
        case idle
        case toStart(until: HostInstant)
        case pass(line: Int, backward: Bool, start: HostInstant, done: Int)
    }

    private(set) var pixels: Int
    private(set) var lines: Int
    private(set) var channels: Int
    var forwardSeconds: Double
    var backwardSeconds: Double
    var continuous = true
    var bouncy = false
    private(set) var up = true
    /// [channel][direction: 0 forward, 1 backward][row][pixel].
    private(set) var data: [Float]
    /// Events so far (`eventCount`) and the latest of them.
    private(set) var eventCount = 0
    private var recent: [LineEvent] = []
    private static let recentLimit = 64
    /// Frames ended (completed), for Scan.WaitEndOfScan.
    private(set) var scansEnded = 0
    /// Frames started since the simulator was made.
    private(set) var framesStarted = 0
    private var motion = Motion.idle
    private(set) var pausedAt: HostInstant?
    private var scratch: [Float]

    init(channels: Int, pixels: Int, lines: Int, forwardSeconds: Double, backwardSeconds: Double) {
        self.channels = channels
        self.pixels = pixels
        self.lines = lines
        self.forwardSeconds = forwardSeconds
        self.backwardSeconds = backwardSeconds
        data = [Float](repeating: .nan, count: channels * 2 * lines * pixels)
        scratch = [Float](repeating: 0, count: channels)
    }

    var isRunning: Bool {
        if case .idle = motion { return false }
        return true
    }

    /// The line (scan order) being scanned, 0 while moving to the start point; nil when stopped.
    var currentLine: Int? {
        switch motion {
        case .idle: return nil
        case .toStart: return 0
        case .pass(let line, _, _, _): return line
        }
    }

    /// The last event, if any.
    var lastEvent: LineEvent? { recent.last }

    /// Event number `n` (0-based, in order), if still remembered.
    func event(_ n: Int) -> LineEvent? {
        let first = eventCount - recent.count
        guard n >= first && n < eventCount else { return nil }
        return recent[n - first]
    }

    /// A new buffer shape (the scan must be stopped): all NaN.
    mutating func reshape(channels: Int, pixels: Int, lines: Int) {
        self.channels = channels
        self.pixels = pixels
        self.lines = lines
        data = [Float](repeating: .nan, count: channels * 2 * lines * pixels)
        scratch = [Float](repeating: 0, count: channels)
    }

    mutating func start(at t: HostInstant, up: Bool) {
        self.up = up
        pausedAt = nil
        for i in data.indices { data[i] = .nan }
        framesStarted += 1
        motion = .toStart(until: t.advanced(byNanoseconds: Self.ns(forwardSeconds)))
    }

    mutating func stop() {
        motion = .idle
        pausedAt = nil
    }

    mutating func pause(at t: HostInstant) {
        if isRunning && pausedAt == nil { pausedAt = t }
    }

    mutating func resume(at t: HostInstant) {
        guard let p = pausedAt else { return }
        pausedAt = nil
        let shift = t.nanoseconds - p.nanoseconds
        switch motion {
        case .idle: break
        case .toStart(let until): motion = .toStart(until: until.advanced(byNanoseconds: shift))
        case .pass(let line, let backward, let start, let done): motion = .pass(line: line, backward: backward, start: start.advanced(byNanoseconds: shift), done: done)
        }
    }

    /// The scan row of scan-order line `k`.
    func row(ofLine k: Int) -> Int { up ? lines - 1 - k : k }

    /// Where the tip is at `t` (after `advance(to: t)`): the row and the pixel position (0…pixels,
    /// fractional), or nil when not scanning a line.
    func tip(at t: HostInstant) -> (row: Int, pixel: Double)? {
        guard case .pass(let line, let backward, let start, _) = motion else { return nil }
        let duration = backward ? backwardSeconds : forwardSeconds
        let f = min(1, max(0, (pausedAt ?? t).seconds(since: start) / duration))
        return (row(ofLine: line), backward ? Double(pixels) * (1 - f) : Double(pixels) * f)
    }

    /// When the next event falls (the end of the current pass or move), if the scan is moving.
    var nextEventTime: HostInstant? {
        guard pausedAt == nil else { return nil }
        switch motion {
        case .idle: return nil
        case .toStart(let until): return until
        case .pass(_, let backward, let start, _): return start.advanced(byNanoseconds: Self.ns(backward ? backwardSeconds : forwardSeconds))
        }
    }

    /// Moves the scan to `now`, asking `sample(row, pixel, backward, time, values)` for the
    /// channels' values at every pixel the tip passes.
    mutating func advance(to now: HostInstant, sample: (Int, Int, Bool, HostInstant, inout [Float]) -> Void) {
        let now = min(now, pausedAt ?? now)
        while true {
            switch motion {
            case .idle:
                return
            case .toStart(let until):
                guard now >= until else { return }
                record(LineEvent(time: until, line: 0, movement: 3))
                motion = .pass(line: 0, backward: false, start: until, done: 0)
            case .pass(let line, let backward, let start, let done):
                let duration = backward ? backwardSeconds : forwardSeconds
                let end = start.advanced(byNanoseconds: Self.ns(duration))
                let reached = now >= end ? pixels : min(pixels, Int(now.seconds(since: start) / duration * Double(pixels)) / 16 * 16)
                if reached > done { fill(line: line, backward: backward, from: done, to: reached, start: start, duration: duration, sample) }
                guard now >= end else {
                    motion = .pass(line: line, backward: backward, start: start, done: max(done, reached))
                    return
                }
                record(LineEvent(time: end, line: Int32(line), movement: backward ? 1 : 0))
                if !backward {
                    motion = .pass(line: line, backward: true, start: end, done: 0)
                } else if line + 1 < lines {
                    motion = .pass(line: line + 1, backward: false, start: end, done: 0)
                } else {
                    scansEnded += 1
                    if continuous {
                        if bouncy { up.toggle() }
                        framesStarted += 1
                        motion = .toStart(until: end.advanced(byNanoseconds: Self.ns(forwardSeconds)))
                    } else {
                        motion = .idle
                        return
                    }
                }
            }
        }
    }

    private mutating func fill(line: Int, backward: Bool, from: Int, to: Int, start: HostInstant, duration: Double, _ sample: (Int, Int, Bool, HostInstant, inout [Float]) -> Void) {
        let r = row(ofLine: line)
        let plane = lines * pixels
        for i in from..<to {
            let column = backward ? pixels - 1 - i : i
            let t = start.advanced(byNanoseconds: Self.ns(duration * (Double(i) + 0.5) / Double(pixels)))
            sample(r, column, backward, t, &scratch)
            for c in 0..<channels {
                data[(c * 2 + (backward ? 1 : 0)) * plane + r * pixels + column] = scratch[c]
            }
        }
    }

    private mutating func record(_ e: LineEvent) {
        if recent.count == Self.recentLimit { recent.removeFirst() }
        recent.append(e)
        eventCount += 1
    }

    static func ns(_ seconds: Double) -> Int64 { Int64((seconds * 1e9).rounded()) }
}
