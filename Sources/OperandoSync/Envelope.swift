import OperandoCore

/// A point of an envelope problem in segment coordinates: `x` device ns since the segment's
/// origin, `y` the offset `host − originHost − x` in ns.
struct EnvelopePoint: Sendable, Equatable {
    var x: Double
    var y: Double
}

/// A line under a set of points (`y ≤ point.y` for all of them), with what the points say
/// about how well it is determined.
struct EnvelopeFit: Sendable, Equatable {
    /// Where the line is anchored (the mean x of the points for the LP line; the support point
    /// for a line of given slope).
    var anchor: Double
    /// The line's value at `anchor`.
    var value: Double
    var slope: Double
    /// True when the slope came from the hull (false: it was given).
    var slopeFromHull: Bool
    /// Residual (point − line, ≥ 0) at rank max(2, n/10): the envelope's noise floor φ. Nil
    /// below five points.
    var floor: Double?
    /// Median residual. Nil below five points.
    var median: Double?
    /// Expected height of the support points above the truth, `2 · floor / k` with k the
    /// floor's rank: for delays whose density is flat near zero the k-th smallest of n is about
    /// k/n of the scale, and the support point of each half of the window is the smallest of
    /// about n/2. Nil below five points.
    var supportNoise: Double?
    /// Smallest residual among the points in the most recent quarter of the x range (between
    /// the mean and the last point, second half): how far the line has left the recent floor.
    var tail: Double
    var firstX: Double
    var lastX: Double
    var count: Int

    @inlinable func y(_ x: Double) -> Double { value + slope * (x - anchor) }
}

/// Pure estimators for lower envelopes. Sources of the ideas (facts, not code): the convex-hull
/// skew estimate of one-way delay measurements, and its linear-programming formulation (Moon,
/// Skelly & Towsley, "Estimation and removal of clock skew from network delay measurements",
/// INFOCOM 1999; Zhang, Liu & Xia, "Clock synchronization algorithms for network
/// measurements", INFOCOM 2002).
enum Envelope {
    /// The lower convex hull of `points`, which must be sorted by x (ties keep the lowest y).
    /// Andrew's monotone chain, O(n).
    static func lowerHull(_ points: [EnvelopePoint]) -> [EnvelopePoint] {
        var h: [EnvelopePoint] = []
        h.reserveCapacity(min(points.count, 64))
        for q in points {
            if let last = h.last, q.x <= last.x {
                // Same x (or out of order by rounding): keep the lower one.
                if q.y >= last.y { continue }
                h.removeLast()
            }
            while h.count >= 2 {
                let a = h[h.count - 2]
                let b = h[h.count - 1]
                // Keep b only if a → b → q turns left (b strictly below the chord a–q).
                let cross = (b.x - a.x) * (q.y - a.y) - (b.y - a.y) * (q.x - a.x)
                if cross <= 0 { h.removeLast() } else { break }
            }
            h.append(q)
        }
        return h
    }

    /// The line under every point that is highest at `x` (the LP solution when `x` is the mean
    /// of the points' x: it minimises the sum of the points' heights above the line). It runs
    /// along the hull edge that spans `x`; at a vertex its slope is the mean of the two edges'
    /// (any slope between them supports the hull there). Nil when the hull has one vertex.
    static func supportingLine(hull h: [EnvelopePoint], at x: Double) -> (value: Double, slope: Double)? {
        guard h.count >= 2 else { return nil }
        var j = 0
        if x >= h[h.count - 1].x {
            j = h.count - 2
        } else if x > h[0].x {
            // Last vertex with h[j].x <= x.
            var lo = 0
            var hi = h.count - 1
            while hi - lo > 1 {
                let mid = (lo + hi) / 2
                if h[mid].x <= x { lo = mid } else { hi = mid }
            }
            j = lo
        }
        var slope = (h[j + 1].y - h[j].y) / (h[j + 1].x - h[j].x)
        if x == h[j].x, j > 0 {
            let left = (h[j].y - h[j - 1].y) / (h[j].x - h[j - 1].x)
            slope = (slope + left) / 2
        }
        return (h[j].y + slope * (x - h[j].x), slope)
    }

    /// The line under `points` (sorted by x): the LP line when `slope` is nil and the hull has
    /// an edge, otherwise the highest line of the given slope (`fallbackSlope` when `slope` is
    /// nil) under all points. Residual statistics are measured against the chosen line.
    static func fitBelow(_ points: [EnvelopePoint], slope forced: Double?, fallbackSlope: Double) -> EnvelopeFit? {
        guard let first = points.first, let last = points.last else { return nil }
        var sumX = 0.0
        for p in points { sumX += p.x - first.x }
        let meanX = first.x + sumX / Double(points.count)

        var anchor = meanX
        var value = 0.0
        var slope = forced ?? fallbackSlope
        var fromHull = false
        if forced == nil, let line = supportingLine(hull: lowerHull(points), at: meanX) {
            value = line.value
            slope = line.slope
            fromHull = true
        } else {
            // Highest line of this slope under every point: it touches the point with the
            // lowest y − slope·x.
            var best = Double.infinity
            for p in points {
                let v = p.y - slope * (p.x - first.x)
                if v < best {
                    best = v
                    anchor = p.x
                }
            }
            value = best + slope * (anchor - first.x)
        }

        var residuals: [Double] = []
        residuals.reserveCapacity(points.count)
        var tail = Double.infinity
        let tailStart = meanX + (last.x - meanX) / 2
        for p in points {
            let r = max(0, p.y - (value + slope * (p.x - anchor)))
            residuals.append(r)
            if p.x >= tailStart { tail = min(tail, r) }
        }
        var floor: Double?
        var median: Double?
        var supportNoise: Double?
        if residuals.count >= 5 {
            let m = residuals.count / 2
            let f = min(m, max(2, residuals.count / 10))
            median = select(&residuals, rank: m, in: 0..<residuals.count)
            // After selecting the median, everything before it is ≤ it: the floor is among them.
            let r = f == m ? median! : select(&residuals, rank: f, in: 0..<m)
            floor = r
            supportNoise = 2 * r / Double(f)
        }
        return EnvelopeFit(
            anchor: anchor, value: value, slope: slope, slopeFromHull: fromHull, floor: floor, median: median, supportNoise: supportNoise,
            tail: tail.isFinite ? tail : 0, firstX: first.x, lastX: last.x, count: points.count)
    }

    /// The element of rank `k` (0-based) of `a[range]` once sorted, found in place in expected
    /// O(n) (Hoare's selection with a median-of-three pivot). Afterwards a[range] holds the
    /// smaller elements before index k and the larger after it.
    static func select(_ a: inout [Double], rank k: Int, in range: Range<Int>) -> Double {
        var lo = range.lowerBound
        var hi = range.upperBound - 1
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            // Median of three into a[mid].
            if a[mid] < a[lo] { a.swapAt(mid, lo) }
            if a[hi] < a[lo] { a.swapAt(hi, lo) }
            if a[hi] < a[mid] { a.swapAt(hi, mid) }
            let pivot = a[mid]
            var i = lo
            var j = hi
            while i <= j {
                while a[i] < pivot { i += 1 }
                while a[j] > pivot { j -= 1 }
                if i <= j {
                    a.swapAt(i, j)
                    i += 1
                    j -= 1
                }
            }
            if k <= j {
                hi = j
            } else if k >= i {
                lo = i
            } else {
                return a[k]
            }
        }
        return a[k]
    }

    /// Which window to map with, and how much to add to its uncertainty.
    ///
    /// The fits come in order of increasing window, level 0 first. Walking up, a longer window
    /// is accepted while its line stays inside the envelope of the recent data (level 0's
    /// blocks in the newer half of its window): no recent upper point below it and no recent
    /// lower point above it by more than half its own u(x) plus `tolerance`; for one-way streams
    /// also not further below the recent points than level 0's own line by more than that. The
    /// walk stops at the first refusal. This is a data-driven cousin of the intersection-of-
    /// confidence-intervals rule (Goldenshluger & Nemirovski 1997; Katkovnik 1999): comparing
    /// the predictions y(x) ± u(x) themselves proved too weak, because level 0's interval is
    /// wide (its slope extrapolated to the present) and, at times, wrong; the recent extremes
    /// show a bending clock directly.
    ///
    /// Among the accepted levels the one with the smallest u(x) maps, and its uncertainty grows
    /// by an allowance for how far off-centre its line sits in the recent envelope (half the
    /// difference of the two sides' smallest residuals; one-way: how much further below the
    /// recent points than level 0's line), and at least to its distance from level 0's line.
    /// On a stable clock the longest window wins by averaging the most data; on a wandering one
    /// the short window keeps the map.
    static func choose(
        _ fits: [WindowFit?], at x: Double, recentUpper: [EnvelopePoint], recentLower: [EnvelopePoint], tolerance: Double
    ) -> (level: Int, allowance: Double)? {
        guard let first = fits.first, let f0 = first else { return nil }
        func smallest(_ f: WindowFit, _ points: [EnvelopePoint], above: Bool) -> Double? {
            guard !points.isEmpty else { return nil }
            var r = Double.infinity
            for p in points { r = min(r, above ? p.y - f.y(p.x) : f.y(p.x) - p.y) }
            return r
        }
        let r0 = smallest(f0, recentUpper, above: true) ?? 0
        var best = (level: 0, allowance: 0.0)
        var bestU = f0.uncertainty(x)
        for l in fits.indices.dropFirst() {
            guard let f = fits[l] else { break }
            let y = f.y(x)
            let u = f.uncertainty(x)
            // The line may leave the recent envelope by half its own uncertainty plus the tolerance.
            let slack = tolerance + u / 2
            guard let rA = smallest(f, recentUpper, above: true), rA >= -slack else { break }
            let allowance: Double
            if let rB = smallest(f, recentLower, above: false) {
                guard rB >= -slack else { break }
                allowance = abs(rB - rA) / 2
            } else {
                guard rA - r0 <= slack else { break }
                allowance = max(0, rA - r0)
            }
            if u < bestU {
                // Never claim less than the distance to level 0's line: when the long line is
                // biased (a bending clock), that distance is the evidence of it.
                let disagreement = abs(y - f0.y(x)) + tolerance / 2
                best = (l, max(allowance, disagreement - u))
                bestU = u
            }
        }
        return best
    }

    /// The slope's uncertainty as a one-way envelope determines it: two support points, each
    /// uncertain by the noise floor φ, half a span apart on either side of the anchor.
    static func hullSlopeUncertainty(_ fit: EnvelopeFit, startupFloor: Double) -> Double {
        let span = fit.lastX - fit.firstX
        guard fit.slopeFromHull, span > 0 else { return .infinity }
        return 2 * (fit.floor ?? startupFloor) / span
    }

    /// The window fit: the line and its uncertainty model from the points under which the true
    /// line must pass (`upper`: arrivals or replies, the line is ≤ them) and, for bracketed
    /// models, the points over which it must pass (`lower`: requests, the line is ≥ them).
    ///
    /// The slope comes from the envelopes when their uncertainty is smaller than the prior's,
    /// otherwise from the prior.
    ///
    /// One-way: the line is the envelope; u = resolution + latency-floor uncertainty + φ + tail
    /// misfit + (2 φ / span) · |x − anchor| (+ stability outside the data), with φ the floor.
    ///
    /// Bracketed: the line is the mean of the two envelopes; u = resolution + |half gap(x)| +
    /// (6 s / span) · |x − anchor| (+ stability outside the data), where s is the mean support
    /// noise of the two envelopes (`EnvelopeFit.supportNoise`; before five blocks, the half gap
    /// itself). At the window's end the slope term is 3 s: each envelope's slope is off by about
    /// √2 s per half span, their mean by about s, and 3 s covers the tail of that error. The half
    /// gap bounds the offset at the anchor exactly when the clock is straight; when it bends
    /// inside the window the envelopes cross and the gap's magnitude measures the bend.
    static func windowFit(
        upper: [EnvelopePoint], lower: [EnvelopePoint], priorSlope: Double, priorSlopeUncertainty: Double,
        lastObserved: Double, configuration c: ClockModelConfiguration
    ) -> WindowFit? {
        // The lower constraints become an envelope-below problem by negating y.
        let negated = lower.map { EnvelopePoint(x: $0.x, y: -$0.y) }
        guard var a = fitBelow(upper, slope: nil, fallbackSlope: priorSlope) else { return nil }
        var b = negated.isEmpty ? nil : fitBelow(negated, slope: nil, fallbackSlope: -priorSlope)

        var sigma: Double
        if let bb = b {
            let span = max(a.lastX - a.firstX, bb.lastX - bb.firstX)
            let gap = abs(a.y(a.anchor) + bb.y(a.anchor)) / 2
            let noise = ((a.supportNoise ?? gap) + (bb.supportNoise ?? gap)) / 2 + c.resolutionNs
            sigma = a.slopeFromHull && bb.slopeFromHull && span > 0 ? 6 * noise / span : .infinity
        } else {
            sigma = hullSlopeUncertainty(a, startupFloor: c.startupLatencyNs)
        }
        var usesPrior = false
        if !(sigma <= priorSlopeUncertainty) {
            usesPrior = true
            sigma = priorSlopeUncertainty
            a = fitBelow(upper, slope: priorSlope, fallbackSlope: priorSlope)!
            if b != nil { b = fitBelow(negated, slope: -priorSlope, fallbackSlope: -priorSlope) }
        }

        var fit = WindowFit(
            anchor: a.anchor, value: a.value, slope: a.slope, baseUncertainty: c.resolutionNs, halfGap: 0, halfGapSlope: 0,
            slopeUncertainty: sigma, firstObserved: a.firstX, lastObserved: max(lastObserved, a.lastX),
            stability: c.stability, usesPriorSlope: usesPrior, upperMedian: a.median)
        if let b {
            // B in real coordinates: yB(x) = −(b.value + b.slope (x − b.anchor)).
            let anchor = (a.anchor + b.anchor) / 2
            let ya = a.y(anchor)
            let yb = -b.y(anchor)
            fit.anchor = anchor
            fit.value = (ya + yb) / 2
            fit.slope = (a.slope - b.slope) / 2
            fit.halfGap = (ya - yb) / 2
            fit.halfGapSlope = (a.slope + b.slope) / 2
            fit.firstObserved = min(a.firstX, b.firstX)
        } else {
            fit.baseUncertainty += c.latencyFloorUncertaintyNs + (a.floor ?? c.startupLatencyNs) + a.tail
        }
        return fit
    }
}

/// A fitted window in segment coordinates: the line and the parameters of its uncertainty
/// (see `ClockLine` for the formula).
struct WindowFit: Sendable, Equatable {
    var anchor: Double
    var value: Double
    var slope: Double
    var baseUncertainty: Double
    var halfGap: Double
    var halfGapSlope: Double
    var slopeUncertainty: Double
    var firstObserved: Double
    var lastObserved: Double
    var stability: Double
    var usesPriorSlope: Bool
    /// Median height of the upper points above the line (one-way high-side detection).
    var upperMedian: Double?

    @inlinable func y(_ x: Double) -> Double { value + slope * (x - anchor) }

    @inlinable func uncertainty(_ x: Double) -> Double {
        let dx = x - anchor
        let outside = x > lastObserved ? x - lastObserved : (x < firstObserved ? firstObserved - x : 0)
        return baseUncertainty + abs(halfGap + halfGapSlope * dx) + slopeUncertainty * abs(dx) + stability * outside
    }

    func line(originDevice: Int64, originHost: Int64) -> ClockLine {
        ClockLine(
            originDevice: originDevice, originHost: .init(nanoseconds: originHost), anchor: anchor, offsetAtAnchorNs: value, drift: slope,
            baseUncertaintyNs: baseUncertainty, halfGapNs: halfGap, halfGapSlope: halfGapSlope, slopeUncertainty: slopeUncertainty,
            firstObserved: firstObserved, lastObserved: lastObserved, stability: stability, usesPriorSlope: usesPriorSlope)
    }
}
