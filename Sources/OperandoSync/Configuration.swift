/// The knobs of the bracketed and one-way clock models, each with its default and bounds.
///
/// Device time is divided into blocks of `blockNs`; each block keeps only its tightest
/// observation on each side (NTP's clock filter and linuxptp's sysoff keep the minimum round
/// trip for the same reason: the tightest observation carries the least queueing). The last
/// `windowBlocks` blocks form the sliding window the line is fitted over, so memory is bounded
/// by `levels × (windowBlocks + 1)` blocks whatever the sample rate. A longer window averages more delay
/// noise away but follows a wandering oscillator less closely: the error a linear fit makes on a
/// drift that changes at rate r (1/s) over a window of T seconds grows like r · T² / 8.
public struct ClockModelConfiguration: Sendable, Equatable, Codable {
    /// Device-time length of one block, ns. Bounds: > 0. Default 5 s (bracketed), 1 s (one-way).
    public var blockNs: Int64
    /// Blocks in the sliding window. Bounds: 4…65 536. Default 64 (bracketed), 256 (one-way).
    public var windowBlocks: Int
    /// Window lengths tried at once (level ℓ has blocks `levelFactor`^ℓ times longer, same
    /// block count). The model maps with the longest window that agrees with all shorter ones
    /// (see `ClockTracker`), so a stable clock gets a long window and a wandering one a short
    /// one. Bounds: 1…8. Default 4.
    public var levels: Int
    /// Ratio of block lengths between levels. Bounds: 2…64. Default 4.
    public var levelFactor: Int
    /// Resolution of the device's timestamps, ns; added to every uncertainty. Bounds: ≥ 0. Default 1.
    public var resolutionNs: Double
    /// One-way only: constant transport latency subtracted from every arrival, ns. A one-way
    /// stream cannot observe it (it is indistinguishable from an offset); calibrate it elsewhere.
    /// Bounds: ≥ 0. Default 0.
    public var latencyFloorNs: Int64
    /// One-way only: uncertainty of `latencyFloorNs`, added to every uncertainty, ns. Default 0.
    public var latencyFloorUncertaintyNs: Double
    /// Largest plausible |drift| of a device clock; the slope prior's uncertainty in a first
    /// segment and after a rate change. Bounds: > 0. Default 200e-6 (200 ppm).
    public var maxDrift: Double
    /// Drift assumed for a first segment until the data measure it. Default 0.
    public var initialDrift: Double
    /// How much the drift may differ across a reset (the same oscillator restarts); the slope
    /// prior's uncertainty after a reset. Bounds: > 0. Default 2e-6 (2 ppm).
    public var resetDriftTolerance: Double
    /// Fractional frequency wander allowed when extrapolating past the observed range. Default 1e-8.
    public var stability: Double
    /// Typical one-way transport delay, ns: the noise floor assumed until the window holds five
    /// blocks. Bounds: > 0. Default 1 ms.
    public var startupLatencyNs: Double
    /// An observation is a violation when it sits on the wrong side of the line by more than
    /// `violationToleranceNs + 2 · u(x)`. Bounds: ≥ 0. Default 20 µs.
    public var violationToleranceNs: Double
    /// Violations of the same sign that confirm a rate change. Bounds: ≥ 1. Default 3.
    public var violationsToConfirm: Int
    /// Consistent observations after which an unconfirmed suspicion is dropped (its violations
    /// discarded as outliers). Bounds: ≥ 1. Default 64.
    public var suspicionObservations: Int
    /// One-way only: a block whose lowest delay above the line exceeds
    /// max(`highToleranceMinimumNs`, `highToleranceFactor` × the window's median block delay)
    /// is "high"; `highBlocksToConfirm` high blocks in a row confirm a rate change (the device
    /// clock slowed, so arrivals drift later than the line). Defaults 8, 20 µs, 3.
    public var highToleranceFactor: Double
    public var highToleranceMinimumNs: Double
    public var highBlocksToConfirm: Int
    /// Slope rule: the envelope of the last `changeBlocks` level-0 blocks is compared with the
    /// longest window in use at every block; a drift differing by more than
    /// max(`minimumRateChange`, 2 × both slopes' uncertainties) for `rateChangeConfirmations`
    /// blocks in a row is a rate change. Smaller changes are followed by the adaptive windows.
    /// Defaults 32, 2e-6 (2 ppm), 3. Over 32 blocks of either default configuration the
    /// envelope slope of a steady clock stayed within 0.8 ppm of the truth in 20 000 simulated
    /// windows (1 ms exponential delays), so 2 ppm leaves a wide margin against false splits.
    public var changeBlocks: Int
    public var minimumRateChange: Double
    public var rateChangeConfirmations: Int
    /// A device time going backwards, or an observation on the impossible side of the line by
    /// more than this, is a reset and starts a new segment at once, ns. Default 100 ms.
    public var resetThresholdNs: Double
    /// Closed segments kept by a live model (oldest dropped first). Bounds: ≥ 1. Default 256.
    public var maxRetainedSegments: Int

    public init(
        blockNs: Int64, windowBlocks: Int, levels: Int = 4, levelFactor: Int = 4, resolutionNs: Double = 1, latencyFloorNs: Int64 = 0,
        latencyFloorUncertaintyNs: Double = 0,
        maxDrift: Double = 200e-6, initialDrift: Double = 0, resetDriftTolerance: Double = 2e-6, stability: Double = 1e-8,
        startupLatencyNs: Double = 1_000_000, violationToleranceNs: Double = 20_000, violationsToConfirm: Int = 3,
        suspicionObservations: Int = 64, highToleranceFactor: Double = 8, highToleranceMinimumNs: Double = 20_000,
        highBlocksToConfirm: Int = 3, changeBlocks: Int = 32, minimumRateChange: Double = 2e-6, rateChangeConfirmations: Int = 3,
        resetThresholdNs: Double = 100_000_000, maxRetainedSegments: Int = 256
    ) {
        self.blockNs = blockNs
        self.windowBlocks = windowBlocks
        self.levels = levels
        self.levelFactor = levelFactor
        self.resolutionNs = resolutionNs
        self.latencyFloorNs = latencyFloorNs
        self.latencyFloorUncertaintyNs = latencyFloorUncertaintyNs
        self.maxDrift = maxDrift
        self.initialDrift = initialDrift
        self.resetDriftTolerance = resetDriftTolerance
        self.stability = stability
        self.startupLatencyNs = startupLatencyNs
        self.violationToleranceNs = violationToleranceNs
        self.violationsToConfirm = violationsToConfirm
        self.suspicionObservations = suspicionObservations
        self.highToleranceFactor = highToleranceFactor
        self.highToleranceMinimumNs = highToleranceMinimumNs
        self.highBlocksToConfirm = highBlocksToConfirm
        self.changeBlocks = changeBlocks
        self.minimumRateChange = minimumRateChange
        self.rateChangeConfirmations = rateChangeConfirmations
        self.resetThresholdNs = resetThresholdNs
        self.maxRetainedSegments = maxRetainedSegments
    }

    /// Bracketed queries: a burst of exchanges every few seconds; blocks of 5 s, 64 blocks
    /// per window: windows of 320 s, 21 min, 85 min and 5.7 h.
    public static let bracketed = ClockModelConfiguration(blockNs: 5_000_000_000, windowBlocks: 64)

    /// One-way streams of tens to thousands of samples per second; blocks of 1 s, 256 blocks per
    /// window: windows of 256 s, 17 min, 68 min and 4.6 h.
    public static let oneWay = ClockModelConfiguration(blockNs: 1_000_000_000, windowBlocks: 256)

    /// What is out of bounds, one sentence per key; empty when the configuration is usable.
    public var problems: [String] {
        var p: [String] = []
        if blockNs <= 0 { p.append("blockNs must be > 0 (got \(blockNs))") }
        if windowBlocks < 4 || windowBlocks > 65_536 { p.append("windowBlocks must be in 4…65536 (got \(windowBlocks))") }
        if levels < 1 || levels > 8 { p.append("levels must be in 1…8 (got \(levels))") }
        if levelFactor < 2 || levelFactor > 64 { p.append("levelFactor must be in 2…64 (got \(levelFactor))") }
        if !(resolutionNs >= 0) { p.append("resolutionNs must be ≥ 0 (got \(resolutionNs))") }
        if latencyFloorNs < 0 { p.append("latencyFloorNs must be ≥ 0 (got \(latencyFloorNs))") }
        if !(latencyFloorUncertaintyNs >= 0) { p.append("latencyFloorUncertaintyNs must be ≥ 0") }
        if !(maxDrift > 0 && maxDrift < 0.5) { p.append("maxDrift must be in (0, 0.5) (got \(maxDrift))") }
        if !(abs(initialDrift) < 0.5) { p.append("initialDrift must be in (-0.5, 0.5) (got \(initialDrift))") }
        if !(resetDriftTolerance > 0) { p.append("resetDriftTolerance must be > 0") }
        if !(stability >= 0) { p.append("stability must be ≥ 0") }
        if !(startupLatencyNs > 0) { p.append("startupLatencyNs must be > 0") }
        if !(violationToleranceNs >= 0) { p.append("violationToleranceNs must be ≥ 0") }
        if violationsToConfirm < 1 { p.append("violationsToConfirm must be ≥ 1") }
        if suspicionObservations < 1 { p.append("suspicionObservations must be ≥ 1") }
        if !(highToleranceFactor > 0) { p.append("highToleranceFactor must be > 0") }
        if !(highToleranceMinimumNs >= 0) { p.append("highToleranceMinimumNs must be ≥ 0") }
        if highBlocksToConfirm < 1 { p.append("highBlocksToConfirm must be ≥ 1") }
        if changeBlocks < 4 || 2 * changeBlocks > windowBlocks { p.append("changeBlocks must be in 4…windowBlocks/2 (got \(changeBlocks))") }
        if !(minimumRateChange > 0) { p.append("minimumRateChange must be > 0") }
        if rateChangeConfirmations < 1 { p.append("rateChangeConfirmations must be ≥ 1") }
        if !(resetThresholdNs > 0) { p.append("resetThresholdNs must be > 0") }
        if maxRetainedSegments < 1 { p.append("maxRetainedSegments must be ≥ 1") }
        return p
    }
}

/// What the clock models of one device need to know about it, as recorded with every run so a
/// refit uses the same assumptions as the live model.
public struct DeviceClockParameters: Sendable, Equatable, Codable {
    /// Resolution of the device's timestamps, ns.
    public var resolutionNs: Double
    /// The most the constant one-way delay can be, ns (see `Instrument.oneWayLatencyMaxNs`).
    public var oneWayLatencyMaxNs: Int64

    public init(resolutionNs: Double = 1, oneWayLatencyMaxNs: Int64 = 1_000_000) {
        self.resolutionNs = resolutionNs
        self.oneWayLatencyMaxNs = oneWayLatencyMaxNs
    }

    /// The bracketed configuration with this device's resolution.
    public var bracketed: ClockModelConfiguration {
        var c = ClockModelConfiguration.bracketed
        c.resolutionNs = resolutionNs
        return c
    }

    /// The one-way configuration: the constant delay is assumed to lie in [0, max], so half of
    /// the max is subtracted from arrivals and half is added to every uncertainty.
    public var oneWay: ClockModelConfiguration {
        var c = ClockModelConfiguration.oneWay
        c.resolutionNs = resolutionNs
        c.latencyFloorNs = oneWayLatencyMaxNs / 2
        c.latencyFloorUncertaintyNs = Double(oneWayLatencyMaxNs - oneWayLatencyMaxNs / 2)
        return c
    }
}
