import OperandoCore

/// One observation reduced to what the envelope needs: at `device` the true host time lies in
/// `[lower, upper]` (no `lower` for one-way streams).
struct Constraint: Sendable, Equatable {
    var device: Int64
    /// Host ns the truth is at or after (a bracketed request), or nil.
    var lower: Int64?
    /// Host ns the truth is at or before (a reply or an arrival, less the latency floor).
    var upper: Int64
}

/// One block of device time: its tightest observation on each side.
struct Block: Sendable, Equatable {
    var startX: Double
    var firstIndex: Int
    var count = 0
    /// x of the block's latest observation.
    var lastX: Double
    /// The upper point with the least height above the line at the time it arrived.
    var upper: EnvelopePoint?
    var upperScore = Double.infinity
    /// The lower point with the least depth below the line at the time it arrived.
    var lower: EnvelopePoint?
    var lowerScore = Double.infinity

    init(startX: Double, firstIndex: Int) {
        self.startX = startX
        self.firstIndex = firstIndex
        lastX = startX
    }
}

/// The last `capacity` blocks, oldest first.
struct BlockRing: Sendable {
    private var storage: [Block] = []
    private var head = 0
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        storage.reserveCapacity(capacity)
    }

    var count: Int { storage.count }

    subscript(i: Int) -> Block { storage[(head + i) % storage.count] }

    mutating func append(_ b: Block) {
        if storage.count < capacity {
            storage.append(b)
        } else {
            storage[head] = b
            head = (head + 1) % capacity
        }
    }

    mutating func removeLast() -> Block? {
        guard !storage.isEmpty else { return nil }
        if head == 0 { return storage.removeLast() }
        // Full ring with wrapped head: rotate into order first (rare: only on a split).
        storage = (0..<storage.count).map { self[$0] }
        head = 0
        return storage.removeLast()
    }
}

/// One window length: its ring of closed blocks, its open block and its fit.
struct Level: Sendable {
    /// Block length, device ns.
    var blockNs: Double
    var ring: BlockRing
    var open: Block?
    var fit: WindowFit?
    /// x of the last observation when `fit` was computed.
    var fittedAt = -Double.infinity
    /// The open block changed since `fit` was computed.
    var dirty = false
    /// Every closed block, for `refit` only.
    var history: [Block]?
}

/// The live state of one segment: origin, counts, the windows of blocks and their fits.
struct SegmentState: Sendable {
    var index: Int
    var reason: SegmentStartReason
    var originDevice: Int64
    var originHost: Int64
    var firstDevice: Int64
    var lastDevice: Int64
    var firstHost: Int64
    var lastHost: Int64
    var count = 0
    var firstIndex: Int
    var levels: [Level]
    /// The fit of `chosen`, which maps and classifies.
    var fit: WindowFit?
    var chosen = 0
    var priorSlope: Double
    var priorSlopeUncertainty: Double
    var highRun = 0
    var rateRun = 0
    var lastX = 0.0
    /// The device's timestamp resolution, ns (`ClockModelConfiguration.resolutionNs`).
    var resolution: Double

    init(
        index: Int, reason: SegmentStartReason, origin c: Constraint, firstIndex: Int, prior: Double, priorUncertainty: Double,
        configuration cfg: ClockModelConfiguration, keepsHistory: Bool
    ) {
        self.index = index
        self.reason = reason
        originDevice = c.device
        originHost = c.upper
        firstDevice = c.device
        lastDevice = c.device
        firstHost = c.upper
        lastHost = c.upper
        self.firstIndex = firstIndex
        var block = Double(cfg.blockNs)
        levels = []
        for _ in 0..<cfg.levels {
            levels.append(Level(blockNs: block, ring: BlockRing(capacity: cfg.windowBlocks), history: keepsHistory ? [] : nil))
            block *= Double(cfg.levelFactor)
        }
        priorSlope = prior
        priorSlopeUncertainty = priorUncertainty
        resolution = cfg.resolutionNs
    }

    /// Segment coordinates of a constraint: x, y of its upper point, y of its lower point.
    @inlinable func coordinates(_ c: Constraint) -> (x: Double, upper: Double, lower: Double?) {
        let x = Double(c.device &- originDevice)
        return (x, Double(c.upper &- originHost) - x, c.lower.map { Double($0 &- originHost) - x })
    }

    /// Blocks that leave this segment for the next one when a change is confirmed after the
    /// fact (the high-side and slope rules), in this segment's coordinates, oldest first.
    struct Split {
        var blocks: [Block]
        var observations: Int
        var firstIndex: Int
        var originDevice: Int64
        var originHost: Int64
        /// Drift and its uncertainty the next segment should start from, when measured.
        var prior: (slope: Double, uncertainty: Double)?
    }

    /// Adds one consistent observation to every level. Returns a split, without adding the
    /// observation, when closing a block has just confirmed a rate change (the one-way
    /// high-side rule or the slope rule): the split's blocks and this observation then belong to
    /// the next segment.
    ///
    /// A level refits when it closes a block, and when its open block gains a point inside the
    /// current envelope (below the line on the upper side, above it on the lower side; every
    /// improvement while the level holds fewer than eight blocks): fitting on every improvement
    /// would cost O(window) per sample on fast streams.
    mutating func add(_ c: Constraint, index: Int, configuration cfg: ClockModelConfiguration, highRule: Bool) -> Split? {
        let (x, yU, yL) = coordinates(c)
        let pred = fit?.y(x) ?? priorSlope * x
        var changed = false
        for l in levels.indices {
            var refit = levels[l].fit == nil
            if let current = levels[l].open, x >= current.startX + levels[l].blockNs {
                levels[l].ring.append(current)
                levels[l].history?.append(current)
                levels[l].open = nil
                refit = true
                if l == 0, let split = (highRule ? highSide(closed: current, configuration: cfg) : nil) ?? slopeChange(cfg) {
                    refitLevel(0, cfg)
                    choose()
                    return split
                }
            }
            if levels[l].open == nil { levels[l].open = Block(startX: x, firstIndex: index) }
            levels[l].open!.count += 1
            levels[l].open!.lastX = x
            let us = yU - pred
            var inside = false
            if us < levels[l].open!.upperScore {
                levels[l].open!.upperScore = us
                levels[l].open!.upper = EnvelopePoint(x: x, y: yU)
                levels[l].dirty = true
                inside = inside || us < 0
            }
            if let yL {
                let ls = pred - yL
                if ls < levels[l].open!.lowerScore {
                    levels[l].open!.lowerScore = ls
                    levels[l].open!.lower = EnvelopePoint(x: x, y: yL)
                    levels[l].dirty = true
                    inside = inside || ls < 0
                }
            }
            // Points inside the current envelope move the line; others only its statistics,
            // which can wait for the block to close.
            if levels[l].dirty && (inside || levels[l].ring.count < 8) { refit = true }
            if refit {
                lastX = x
                refitLevel(l, cfg)
                changed = true
            }
        }
        count += 1
        lastDevice = c.device
        lastHost = c.upper
        lastX = x
        if changed {
            choose()
        } else if let seen = fit?.lastObserved, x > seen {
            fit?.lastObserved = x
        }
        return nil
    }

    /// Applies the one-way high-side rule to a block level 0 just closed.
    private mutating func highSide(closed block: Block, configuration cfg: ClockModelConfiguration) -> Split? {
        guard let f = levels[0].fit, !f.usesPriorSlope, let median = f.upperMedian else {
            highRun = 0
            return nil
        }
        let threshold = max(cfg.highToleranceMinimumNs, cfg.highToleranceFactor * median)
        highRun = block.upperScore > threshold ? highRun + 1 : 0
        guard highRun >= cfg.highBlocksToConfirm else { return nil }
        let run = highRun
        highRun = 0
        return split(lastBlocks: run, from: -.infinity, prior: nil)
    }

    /// The slope rule, at each block level 0 closes: the envelope of its last `changeBlocks`
    /// blocks against the longest window in use. A drift that differs by more than
    /// max(`minimumRateChange`, 2 × the two slopes' uncertainties) for `rateChangeConfirmations`
    /// blocks in a row is a rate change. The newest blocks that have left the reference line by
    /// more than `violationToleranceNs` (plus twice the median delay of the older half, for a
    /// one-way stream drifting late) move to the new segment, whose drift prior is their own
    /// envelope's slope.
    private mutating func slopeChange(_ cfg: ClockModelConfiguration) -> Split? {
        let n = cfg.changeBlocks
        let ring = levels[0].ring
        guard ring.count >= 2 * n, let reference = longestFit() else {
            rateRun = 0
            return nil
        }
        var upper: [EnvelopePoint] = []
        var lower: [EnvelopePoint] = []
        for i in (ring.count - n)..<ring.count {
            if let p = ring[i].upper { upper.append(p) }
            if let p = ring[i].lower { lower.append(p) }
        }
        guard
            let recent = Envelope.windowFit(
                upper: upper, lower: lower, priorSlope: reference.slope, priorSlopeUncertainty: cfg.maxDrift, lastObserved: lastX, configuration: cfg),
            !recent.usesPriorSlope
        else {
            rateRun = 0
            return nil
        }
        let change = recent.slope - reference.slope
        let threshold = max(cfg.minimumRateChange, 2 * (recent.slopeUncertainty + reference.slopeUncertainty))
        rateRun = abs(change) > threshold ? rateRun + 1 : 0
        guard rateRun >= cfg.rateChangeConfirmations else { return nil }
        rateRun = 0
        // The change point: walking back from the newest block, the first block that still
        // sits where the reference line says. Newer blocks have left it in the direction of the
        // change (their envelope points, or for bracketed blocks the midpoint of the two).
        let direction: Double = change > 0 ? 1 : -1
        var deviations: [Double] = []
        for i in (ring.count - n)..<ring.count {
            let b = ring[i]
            let up = b.upper.map { $0.y - reference.y($0.x) }
            let low = b.lower.map { reference.y($0.x) - $0.y }
            switch (up, low) {
            case (let u?, let l?): deviations.append((u - l) / 2)
            case (let u?, nil): deviations.append(u)
            default: deviations.append(0)
            }
        }
        // Queueing only adds delay: a one-way block's upward deviations carry its delay floor.
        let older = deviations[..<(n / 2)].sorted()
        let floor = lower.isEmpty && direction > 0 ? 2 * older[older.count / 2] : 0
        let band = cfg.violationToleranceNs + floor
        var moved = 0
        for d in deviations.reversed() {
            guard direction * d > band else { break }
            moved += 1
        }
        moved = max(moved, 2)
        let from = ring[ring.count - moved].startX
        var newUpper: [EnvelopePoint] = []
        var newLower: [EnvelopePoint] = []
        for i in (ring.count - moved)..<ring.count {
            if let p = ring[i].upper { newUpper.append(p) }
            if let p = ring[i].lower { newLower.append(p) }
        }
        var prior = (slope: recent.slope, uncertainty: max(recent.slopeUncertainty, abs(change) / 2))
        if let own = Envelope.windowFit(
            upper: newUpper, lower: newLower, priorSlope: recent.slope, priorSlopeUncertainty: cfg.maxDrift, lastObserved: lastX, configuration: cfg),
            !own.usesPriorSlope
        {
            prior = (own.slope, own.slopeUncertainty)
        }
        return split(lastBlocks: moved, from: from, prior: prior)
    }

    /// The fit of the longest window that is in use or could be (its shorter neighbour is full),
    /// with a measured slope: the stiffest reference this segment has.
    private func longestFit() -> WindowFit? {
        var best: WindowFit?
        for (l, level) in levels.enumerated() {
            guard l == 0 || levels[l - 1].ring.count == levels[l - 1].ring.capacity else { break }
            if let f = level.fit, !f.usesPriorSlope { best = f }
        }
        return best
    }

    /// Removes up to `count` blocks from the end of level 0 (those ending at or after `from`)
    /// and returns them as a split.
    private mutating func split(lastBlocks count: Int, from: Double, prior: (slope: Double, uncertainty: Double)?) -> Split? {
        var moved: [Block] = []
        var observations = 0
        for _ in 0..<count {
            guard levels[0].ring.count > 1, levels[0].ring[levels[0].ring.count - 1].lastX >= from, let b = levels[0].ring.removeLast() else { break }
            _ = levels[0].history?.popLast()
            observations += b.count
            moved.append(b)
        }
        guard let first = moved.last else { return nil }
        self.count -= observations
        highRun = 0
        rateRun = 0
        let last = levels[0].ring[levels[0].ring.count - 1]
        lastX = last.lastX
        lastDevice = originDevice &+ Int64(last.lastX.rounded())
        lastHost = originHost &+ Int64(last.lastX.rounded()) &+ Int64((fit?.y(last.lastX) ?? 0).rounded())
        return Split(
            blocks: moved.reversed(), observations: observations, firstIndex: first.firstIndex, originDevice: originDevice, originHost: originHost,
            prior: prior)
    }

    /// Takes over the blocks of a split (translated into this segment's coordinates) as the
    /// start of its level-0 window.
    mutating func adopt(_ split: Split, configuration cfg: ClockModelConfiguration) {
        let dx = originDevice &- split.originDevice
        let dy = Double((split.originHost &- originHost) &+ dx)
        let shift = Double(dx)
        for var b in split.blocks {
            b.startX -= shift
            b.lastX -= shift
            b.upper = b.upper.map { EnvelopePoint(x: $0.x - shift, y: $0.y + dy) }
            b.lower = b.lower.map { EnvelopePoint(x: $0.x - shift, y: $0.y + dy) }
            levels[0].ring.append(b)
            levels[0].history?.append(b)
            lastX = max(lastX, b.lastX)
        }
        count = split.observations
        if let last = split.blocks.last {
            lastDevice = originDevice &+ Int64((last.lastX - shift).rounded())
        }
        for l in levels.indices { refitLevel(l, cfg) }
        choose()
    }

    /// The origin a split's first block gives the next segment.
    static func origin(of split: Split) -> Constraint? {
        guard let b = split.blocks.first, let p = b.upper ?? b.lower else { return nil }
        let dx = Int64(p.x.rounded())
        return Constraint(device: split.originDevice &+ dx, lower: nil, upper: split.originHost &+ dx &+ Int64(p.y.rounded()))
    }

    /// Refits one level over its window (closed blocks and the open one).
    mutating func refitLevel(_ l: Int, _ cfg: ClockModelConfiguration) {
        levels[l].fit = Self.fit(levels[l].ring, open: levels[l].open, priorSlope: priorSlope, priorSlopeUncertainty: priorSlopeUncertainty, lastX: lastX, cfg)
        levels[l].fittedAt = lastX
        levels[l].dirty = false
    }

    /// The window fit of a ring of blocks and an open block (pure).
    static func fit(
        _ ring: BlockRing, open: Block?, priorSlope: Double, priorSlopeUncertainty: Double, lastX: Double, _ cfg: ClockModelConfiguration
    ) -> WindowFit? {
        var upper: [EnvelopePoint] = []
        var lower: [EnvelopePoint] = []
        upper.reserveCapacity(ring.count + 1)
        for i in 0..<ring.count {
            let b = ring[i]
            if let p = b.upper { upper.append(p) }
            if let p = b.lower { lower.append(p) }
        }
        if let b = open {
            if let p = b.upper { upper.append(p) }
            if let p = b.lower { lower.append(p) }
        }
        return Envelope.windowFit(
            upper: upper, lower: lower, priorSlope: priorSlope, priorSlopeUncertainty: priorSlopeUncertainty, lastObserved: lastX, configuration: cfg)
    }

    /// Chooses the level that maps: see `Envelope.choose`.
    mutating func choose() {
        // A longer window adds nothing until the next shorter one has filled and slides: before
        // that it holds the same data in fewer, coarser blocks, and its few points say little
        // about its own noise floor.
        var fits: [WindowFit?] = []
        for (l, level) in levels.enumerated() {
            guard l == 0 || levels[l - 1].ring.count == levels[l - 1].ring.capacity else { break }
            fits.append(level.fit)
        }
        // Level 0's blocks in the newer half of its window: the recent envelope.
        var recentUpper: [EnvelopePoint] = []
        var recentLower: [EnvelopePoint] = []
        if fits.count > 1 {
            let ring = levels[0].ring
            let start = ring.count > 0 ? ring[0].startX : lastX
            let middle = start + (lastX - start) / 2
            func collect(_ b: Block) {
                if let p = b.upper, p.x >= middle { recentUpper.append(p) }
                if let p = b.lower, p.x >= middle { recentLower.append(p) }
            }
            for i in 0..<ring.count where ring[i].lastX >= middle { collect(ring[i]) }
            if let b = levels[0].open { collect(b) }
        }
        guard let (l, allowance) = Envelope.choose(fits, at: lastX, recentUpper: recentUpper, recentLower: recentLower, tolerance: 2 * resolution)
        else { return }
        chosen = l
        fit = fits[l]
        fit?.baseUncertainty += allowance
        if let seen = fit?.lastObserved, lastX > seen { fit?.lastObserved = lastX }
    }

    /// The host instant of a device time on the current line.
    func map(_ deviceTime: Int64) -> MappedInstant? {
        guard let fit else { return nil }
        let (dx, overflow) = deviceTime.subtractingReportingOverflow(originDevice)
        guard !overflow else { return nil }
        let x = Double(dx)
        return compose(origin: .init(nanoseconds: originHost), deviceOffset: dx, offset: fit.y(x), uncertainty: fit.uncertainty(x))
    }

    /// A snapshot as a public segment.
    func snapshot() -> ClockSegment {
        // Before the first fit: the prior line through the origin, with no claim of accuracy.
        let prior = WindowFit(
            anchor: 0, value: 0, slope: priorSlope, baseUncertainty: 1e18, halfGap: 0, halfGapSlope: 0, slopeUncertainty: priorSlopeUncertainty,
            firstObserved: 0, lastObserved: 0, stability: 0, usesPriorSlope: true, upperMedian: nil)
        let line = (fit ?? prior).line(originDevice: originDevice, originHost: originHost)
        return ClockSegment(
            index: index, reason: reason, firstDeviceTime: firstDevice, lastDeviceTime: lastDevice, firstHost: .init(nanoseconds: firstHost),
            lastHost: .init(nanoseconds: lastHost), observationCount: count, firstObservationIndex: firstIndex, line: line)
    }

    /// Closed blocks of every level plus the open ones (refit only).
    func histories() -> [[Block]] {
        levels.map { level in
            var h = level.history ?? []
            if let b = level.open { h.append(b) }
            return h
        }
    }
}

/// The segmenting estimator shared by the bracketed and one-way models.
///
/// Windows: every segment keeps `levels` sliding windows of `windowBlocks` blocks, block
/// lengths growing by `levelFactor` (see `ClockModelConfiguration`); each block keeps its
/// tightest observation on each side. Every window is fitted (`Envelope.windowFit`) and
/// `Envelope.choose` picks the one that maps: the longest that still agrees with the shorter
/// ones and with the recent data. Memory: levels × (windowBlocks + 1) blocks.
///
/// Change detection (a new segment, never a bent line):
/// - reset: the device time goes backwards, or an observation lies on the impossible side of
///   the line (an arrival before the mapped instant; a request after it) by more than
///   `resetThresholdNs + 2 u(x)`: a new segment starts at once, its drift prior the old drift
///   ± `resetDriftTolerance`.
/// - fast change: an observation on the impossible side by more than
///   `violationToleranceNs + 2 u(x)` is a violation. Queueing cannot produce one, so it means
///   the line is wrong or the observation is corrupt. Further observations are held back (not
///   fitted); `violationsToConfirm` violations of the same sign start a new segment at the
///   first of them, seeded with everything held back. `suspicionObservations` consistent
///   observations in a row instead release the held ones into the segment and discard the
///   violations as outliers.
/// - slope change: at every block level 0 closes, the envelope of its last `changeBlocks` blocks
///   is compared with the longest window's line; a drift difference above
///   max(`minimumRateChange`, 2 × both slopes' uncertainties) for `rateChangeConfirmations`
///   blocks in a row moves the blocks that have left the old line to a new segment (this
///   catches changes that the fast rule misses because the windows would slowly follow them).
/// - slow side (one-way only, where a slower device clock makes arrivals drift later, which
///   queueing can also do): a block is high when even its lowest delay above the line exceeds
///   max(`highToleranceMinimumNs`, `highToleranceFactor` × the window's median block delay);
///   `highBlocksToConfirm` high blocks in a row move to a new segment. Bracketed exchanges need
///   no slow side: either direction of change pushes one of the two envelopes onto its
///   impossible side.
struct ClockTracker: Sendable {
    let configuration: ClockModelConfiguration
    /// Apply the one-way high-side rule.
    let highRule: Bool
    /// Keep every block of every segment (for `refit`).
    let keepsHistory: Bool

    private struct Suspicion: Sendable {
        var sign: Int
        var violations: Int
        var quiet: Int
        var firstIndex: Int
    }

    private enum Phase: Sendable {
        case empty
        case tracking
        case suspect(Suspicion)
    }

    private enum Verdict {
        case consistent
        case violation(sign: Int)
        case reset
    }

    private var phase = Phase.empty
    private(set) var current: SegmentState?
    private(set) var closed: [ClockSegment] = []
    /// With `keepsHistory`, the blocks of every level of every closed segment, in the order of `closed`.
    private(set) var histories: [[[Block]]] = []
    /// Observations held back while a violation is being confirmed, and whether each violated.
    private var held: [(constraint: Constraint, violated: Bool, index: Int)] = []
    private(set) var observed = 0
    private var segmentsStarted = 0

    init(configuration: ClockModelConfiguration, highRule: Bool, keepsHistory: Bool = false) {
        precondition(configuration.problems.isEmpty, "invalid clock model configuration: \(configuration.problems.joined(separator: "; "))")
        self.configuration = configuration
        self.highRule = highRule
        self.keepsHistory = keepsHistory
    }

    /// Observations held in memory: window blocks (two points each), held-back observations and
    /// closed segments. Bounded by the configuration, whatever the number of observations.
    var retainedCount: Int {
        (current?.levels.reduce(0) { $0 + $1.ring.count + 1 } ?? 0) + held.count + closed.count
    }

    /// Classifies one observation against the current segment (pure).
    private static func classify(
        _ c: Constraint, fit: WindowFit?, originDevice: Int64, originHost: Int64, lastDevice: Int64, _ cfg: ClockModelConfiguration
    ) -> Verdict {
        if c.device < lastDevice { return .reset }
        let (dx, overflow) = c.device.subtractingReportingOverflow(originDevice)
        if overflow { return .reset }
        guard let fit else { return .consistent }
        let x = Double(dx)
        let yU = Double(c.upper &- originHost) - x
        let yL = c.lower.map { Double($0 &- originHost) - x }
        let pred = fit.y(x)
        let u = fit.uncertainty(x)
        let tolerance = cfg.violationToleranceNs + 2 * u
        let resetTolerance = cfg.resetThresholdNs + 2 * u
        let upperResidual = yU - pred
        let lowerResidual = yL.map { pred - $0 } ?? 0
        if upperResidual < -resetTolerance || lowerResidual < -resetTolerance { return .reset }
        if upperResidual < -tolerance { return .violation(sign: -1) }
        if lowerResidual < -tolerance { return .violation(sign: 1) }
        return .consistent
    }

    /// What mapping needs of the live segment, kept apart so that mapping does not copy the
    /// segment's windows.
    private struct Live: Sendable {
        var fit: WindowFit
        var originDevice: Int64
        var originHost: Int64
        var firstDevice: Int64
        var lastDevice: Int64

        func map(_ deviceTime: Int64) -> MappedInstant? {
            let (dx, overflow) = deviceTime.subtractingReportingOverflow(originDevice)
            guard !overflow else { return nil }
            let x = Double(dx)
            return compose(origin: .init(nanoseconds: originHost), deviceOffset: dx, offset: fit.y(x), uncertainty: fit.uncertainty(x))
        }
    }

    private var live: Live?

    /// Adds one observation.
    mutating func observe(_ c: Constraint) -> ClockModelEvent? {
        let event = step(c)
        if let fit = current?.fit, let origin = current?.originDevice, let host = current?.originHost, let first = current?.firstDevice,
            let last = current?.lastDevice
        {
            live = Live(fit: fit, originDevice: origin, originHost: host, firstDevice: first, lastDevice: last)
        } else {
            live = nil
        }
        return event
    }

    /// The state machine: one switch over phase and verdict.
    private mutating func step(_ c: Constraint) -> ClockModelEvent? {
        let index = observed
        observed += 1
        guard current != nil else {
            return begin(seeds: [c], observations: 1, firstIndex: index, reason: .first)
        }
        let verdict = Self.classify(
            c, fit: current!.fit, originDevice: current!.originDevice, originHost: current!.originHost, lastDevice: current!.lastDevice, configuration)
        switch (phase, verdict) {
        case (_, .reset):
            _ = release()
            return begin(seeds: [c], observations: 1, firstIndex: index, reason: .reset)
        case (.empty, _), (.tracking, .consistent):
            phase = .tracking
            return add(c, index: index)
        case (.tracking, .violation(let sign)):
            held = [(c, true, index)]
            phase = .suspect(Suspicion(sign: sign, violations: 1, quiet: 0, firstIndex: index))
            return nil
        case (.suspect(var s), .violation(let sign)) where sign == s.sign:
            held.append((c, true, index))
            s.violations += 1
            s.quiet = 0
            guard s.violations >= configuration.violationsToConfirm else {
                phase = .suspect(s)
                return nil
            }
            let seeds = held.map(\.constraint)
            held = []
            return begin(seeds: seeds, observations: seeds.count, firstIndex: s.firstIndex, reason: .rateChange)
        case (.suspect, .violation(let sign)):
            // The opposite side: what was held was noise; this may be the start of something.
            let dropped = release()
            held = [(c, true, index)]
            phase = .suspect(Suspicion(sign: sign, violations: 1, quiet: 0, firstIndex: index))
            return dropped > 0 ? .outliersDiscarded(count: dropped) : nil
        case (.suspect(var s), .consistent):
            held.append((c, false, index))
            s.quiet += 1
            guard s.quiet >= configuration.suspicionObservations else {
                phase = .suspect(s)
                return nil
            }
            let dropped = release()
            return .outliersDiscarded(count: dropped)
        }
    }

    /// Adds a consistent observation to the current segment, splitting when the high-side rule
    /// fires.
    private mutating func add(_ c: Constraint, index: Int) -> ClockModelEvent? {
        guard let split = current!.add(c, index: index, configuration: configuration, highRule: highRule),
            let origin = SegmentState.origin(of: split)
        else { return nil }
        let event = begin(seeds: [], origin: origin, observations: split.observations, firstIndex: split.firstIndex, reason: .rateChange, prior: split.prior)
        current!.adopt(split, configuration: configuration)
        _ = current!.add(c, index: index, configuration: configuration, highRule: false)
        return event
    }

    /// Feeds the held observations that did not violate into the current segment; returns how
    /// many violating ones were discarded.
    private mutating func release() -> Int {
        let items = held
        held = []
        phase = .tracking
        var dropped = 0
        for (c, violated, index) in items {
            if violated {
                dropped += 1
            } else if let s = current, c.device >= s.lastDevice {
                _ = add(c, index: index)
            }
        }
        return dropped
    }

    /// Closes the current segment and starts the next at `origin` (default: the first seed),
    /// fed with `seeds`.
    private mutating func begin(
        seeds: [Constraint], origin: Constraint? = nil, observations: Int, firstIndex: Int, reason: SegmentStartReason,
        prior measured: (slope: Double, uncertainty: Double)? = nil
    ) -> ClockModelEvent? {
        guard let first = origin ?? seeds.first else { return nil }
        var prior = configuration.initialDrift
        var priorUncertainty = configuration.maxDrift
        if let old = current {
            if let fit = old.fit { prior = fit.slope }
            if reason == .reset { priorUncertainty = configuration.resetDriftTolerance }
            if let measured {
                prior = measured.slope
                priorUncertainty = max(measured.uncertainty, configuration.resetDriftTolerance)
            }
            closed.append(old.snapshot())
            if keepsHistory { histories.append(old.histories()) }
            if closed.count > configuration.maxRetainedSegments && !keepsHistory { closed.removeFirst() }
        }
        var s = SegmentState(
            index: segmentsStarted, reason: reason, origin: first, firstIndex: firstIndex, prior: prior, priorUncertainty: priorUncertainty,
            configuration: configuration, keepsHistory: keepsHistory)
        segmentsStarted += 1
        for c in seeds where c.device >= s.lastDevice {
            _ = s.add(c, index: firstIndex, configuration: configuration, highRule: false)
        }
        s.count = observations
        current = s
        phase = .tracking
        return .segmentStarted(index: s.index, reason: reason, deviceTime: first.device)
    }

    /// Ends the stream: the current segment's open block joins its history (refit only).
    mutating func finish() -> (segments: [ClockSegment], histories: [[[Block]]]) {
        _ = release()
        live = nil
        var segments = closed
        var hs = histories
        if let s = current {
            segments.append(s.snapshot())
            hs.append(s.histories())
        }
        return (segments, hs)
    }

    /// Closed segments and the live one.
    var segments: [ClockSegment] { closed + (current.map { [$0.snapshot()] } ?? []) }

    /// Maps a device time: with the live segment when the time lies in its range (widened by a
    /// block each way); else with the most recent closed segment that observed it; else with the
    /// live segment when the time is later than anything seen (extrapolation); else nil.
    func map(deviceTime d: Int64) -> MappedInstant? {
        guard let live else { return nil }
        if d >= live.firstDevice &- configuration.blockNs && d <= live.lastDevice &+ configuration.blockNs { return live.map(d) }
        for seg in closed.reversed() where seg.contains(deviceTime: d) { return seg.map(deviceTime: d) }
        return d > live.lastDevice ? live.map(d) : nil
    }

    /// Maps a device time of something that arrived at `arrival`: the first of the live and
    /// closed segments (newest first) that places it no later than its arrival (within its
    /// uncertainty and the violation tolerance) and no earlier than `resetThresholdNs` before.
    /// Nil when none does: the sample belongs to a clock regime the model has not seen yet.
    func map(deviceTime d: Int64, receivedAt arrival: HostInstant) -> MappedInstant? {
        func plausible(_ m: MappedInstant?) -> MappedInstant? {
            guard let m else { return nil }
            let late = Double(m.host.nanoseconds &- arrival.nanoseconds)
            let ok =
                late <= Double(m.uncertaintyNs) + configuration.violationToleranceNs
                && late >= -(configuration.resetThresholdNs + Double(m.uncertaintyNs))
            return ok ? m : nil
        }
        if let m = plausible(live?.map(d)) { return m }
        for seg in closed.reversed() {
            if let m = plausible(seg.map(deviceTime: d)) { return m }
        }
        return nil
    }
}
