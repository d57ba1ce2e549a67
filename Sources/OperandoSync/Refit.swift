/// Refits a whole run of bracketed exchanges after the fact (pure).
///
/// The segments are found as the live model finds them (same configuration, same change
/// detection); then each segment is fitted again with hindsight: one line over all of it
/// (`ClockSegment.line`) and a knot every `windowBlocks / 16` blocks from a window centred on
/// the knot (`ClockSegment.knots`), so that every timestamp is interpolated between data on both
/// sides instead of extrapolated from the past. Map timestamps with `ClockSegment.map`, choosing
/// the segment by arrival with `[ClockSegment].segment(receivedAt:)` after a reset.
///
/// - Parameter exchanges: every stored exchange of the device, in the order they happened.
public func refit(_ exchanges: [BracketedExchange], configuration: ClockModelConfiguration = .bracketed) -> [ClockSegment] {
    ClockRefit.run(
        exchanges.lazy.filter { $0.hostAfter >= $0.hostBefore }.map {
            Constraint(device: $0.deviceTime, lower: $0.hostBefore.nanoseconds, upper: $0.hostAfter.nanoseconds)
        }, configuration: configuration, highRule: false)
}

/// Refits a whole one-way stream after the fact (pure); see the bracketed `refit`.
///
/// - Parameter samples: every stored (device time, arrival) pair, in arrival order.
public func refit(_ samples: [OneWaySample], configuration: ClockModelConfiguration = .oneWay) -> [ClockSegment] {
    ClockRefit.run(
        samples.lazy.map { Constraint(device: $0.deviceTime, lower: nil, upper: $0.hostArrival.nanoseconds &- configuration.latencyFloorNs) },
        configuration: configuration, highRule: true)
}

enum ClockRefit {
    static func run(_ constraints: some Sequence<Constraint>, configuration: ClockModelConfiguration, highRule: Bool) -> [ClockSegment] {
        var tracker = ClockTracker(configuration: configuration, highRule: highRule, keepsHistory: true)
        for c in constraints { _ = tracker.observe(c) }
        let (segments, histories) = tracker.finish()
        return zip(segments, histories).map { refit($0, blocks: $1, configuration: configuration) }
    }

    /// One segment with hindsight: the whole-segment line and the centred-window knots, each
    /// knot from the level chosen by `Envelope.choose` among windows centred on it.
    static func refit(_ segment: ClockSegment, blocks levels: [[Block]], configuration c: ClockModelConfiguration) -> ClockSegment {
        guard let base = levels.first, !base.isEmpty else { return segment }
        let priorSlope = segment.line.drift
        let priorUncertainty = segment.reason == .reset ? c.resetDriftTolerance : c.maxDrift
        func fit(_ blocks: [Block], _ range: Range<Int>) -> WindowFit? {
            var upper: [EnvelopePoint] = []
            var lower: [EnvelopePoint] = []
            upper.reserveCapacity(range.count)
            for b in blocks[range] {
                if let p = b.upper { upper.append(p) }
                if let p = b.lower { lower.append(p) }
            }
            let last = blocks[range.upperBound - 1].lastX
            return Envelope.windowFit(
                upper: upper, lower: lower, priorSlope: priorSlope, priorSlopeUncertainty: priorUncertainty, lastObserved: last, configuration: c)
        }
        /// Index of the block of `blocks` whose start is the last at or before x (0 if none).
        func blockIndex(_ blocks: [Block], _ x: Double) -> Int {
            var lo = 0
            var hi = blocks.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if blocks[mid].startX <= x { lo = mid + 1 } else { hi = mid }
            }
            return max(0, lo - 1)
        }
        var out = segment
        let origin = segment.line.originDevice
        let originHost = segment.line.originHost.nanoseconds
        if let whole = fit(base, 0..<base.count) { out.line = whole.line(originDevice: origin, originHost: originHost) }

        let half = c.windowBlocks / 2
        let stride = max(1, c.windowBlocks / 16)
        var centres = Array(Swift.stride(from: 0, to: base.count, by: stride))
        if centres.last != base.count - 1 { centres.append(base.count - 1) }
        var knots: [ClockKnot] = []
        knots.reserveCapacity(centres.count)
        for k in centres {
            let x = base[k].upper?.x ?? base[k].startX
            let device = origin &+ Int64(x.rounded())
            if let last = knots.last, device <= last.deviceTime { continue }
            let xr = Double(device &- origin)
            var fits: [WindowFit?] = []
            for (l, blocks) in levels.enumerated() where !blocks.isEmpty {
                // As live: a longer window only once the shorter one spans more than its blocks.
                if l > 0 && levels[l - 1].count <= c.windowBlocks { break }
                let i = blockIndex(blocks, xr)
                fits.append(fit(blocks, max(0, i - half)..<min(blocks.count, i + half + 1)))
            }
            // The data around the knot (half of level 0's window) is what longer windows must fit.
            var nearUpper: [EnvelopePoint] = []
            var nearLower: [EnvelopePoint] = []
            for b in base[max(0, k - half / 2)..<min(base.count, k + half / 2 + 1)] {
                if let p = b.upper { nearUpper.append(p) }
                if let p = b.lower { nearLower.append(p) }
            }
            guard let (l, allowance) = Envelope.choose(fits, at: xr, recentUpper: nearUpper, recentLower: nearLower, tolerance: 2 * c.resolutionNs),
                let f = fits[l]
            else { continue }
            knots.append(ClockKnot(deviceTime: device, offsetNs: f.y(xr), drift: f.slope, uncertaintyNs: f.uncertainty(xr) + allowance))
        }
        out.knots = knots
        return out
    }
}
