import OperandoCore

/// A straight-line map from one device clock segment to host time, with its uncertainty.
///
/// Coordinates: `x = deviceTime − originDevice` (device ns) and the offset
/// `y(x) = host − originHost − x`, so that
///
///     host(deviceTime) = originHost + x + offsetAtAnchorNs + drift · (x − anchor)
///
/// `drift` is dimensionless (1e-6 is 1 ppm: the device clock runs slow by 1 µs per second when
/// positive, because host time then advances faster than device time).
///
/// The uncertainty (a half-width in ns) at device offset `x` is
///
///     u(x) = baseUncertaintyNs
///          + |halfGapNs + halfGapSlope · (x − anchor)|
///          + slopeUncertainty · |x − anchor|
///          + stability · (distance from x to [firstObserved, lastObserved])
///
/// - `baseUncertaintyNs`: device clock resolution, the configured uncertainty of a one-way
///   latency floor, the envelope's noise floor (one-way only), and the tail misfit (how far the
///   most recent quarter of the window sits from the line: the signature of a drift that is
///   bending).
/// - `halfGapNs`: bracketed only: half the vertical distance between the two envelopes
///   (the line under the `hostAfter` points and the line over the `hostBefore` points). For a
///   single exchange it is exactly half the round trip (sysoff's and NTP's bound); over a window
///   it is the tightest bracket a straight clock allows. A negative gap (the envelopes cross)
///   means no straight line fits the window: the clock bent inside it, by at least that much,
///   so its magnitude counts too.
/// - `slopeUncertainty`: the standard error of the slope, either from the envelope
///   (2 · noise floor / window span) or from the prior (see `ClockModelConfiguration`).
/// - `stability`: allowed drift wander when extrapolating outside the observed range.
public struct ClockLine: Sendable, Equatable, Codable {
    /// Device time of the segment's origin (its first observation).
    public var originDevice: Int64
    /// Host time of the segment's origin.
    public var originHost: HostInstant
    /// Device offset (ns since `originDevice`) at which the line is best determined.
    public var anchor: Double
    /// `host − originHost − x` at `anchor`, in ns.
    public var offsetAtAnchorNs: Double
    /// d(host)/d(device) − 1.
    public var drift: Double
    /// Constant part of the uncertainty, ns.
    public var baseUncertaintyNs: Double
    /// Half the gap between the bracketing envelopes at `anchor`, ns (0 for one-way models).
    public var halfGapNs: Double
    /// Rate at which that half gap changes with `x`.
    public var halfGapSlope: Double
    /// Standard uncertainty of `drift`.
    public var slopeUncertainty: Double
    /// Smallest device offset the fit saw.
    public var firstObserved: Double
    /// Largest device offset the fit saw.
    public var lastObserved: Double
    /// Fractional frequency wander allowed outside the observed range.
    public var stability: Double
    /// True while the slope comes from the prior (too little data in the segment to measure it).
    public var usesPriorSlope: Bool

    public init(
        originDevice: Int64, originHost: HostInstant, anchor: Double, offsetAtAnchorNs: Double, drift: Double,
        baseUncertaintyNs: Double = 0, halfGapNs: Double = 0, halfGapSlope: Double = 0, slopeUncertainty: Double = 0,
        firstObserved: Double = 0, lastObserved: Double = 0, stability: Double = 0, usesPriorSlope: Bool = false
    ) {
        self.originDevice = originDevice
        self.originHost = originHost
        self.anchor = anchor
        self.offsetAtAnchorNs = offsetAtAnchorNs
        self.drift = drift
        self.baseUncertaintyNs = baseUncertaintyNs
        self.halfGapNs = halfGapNs
        self.halfGapSlope = halfGapSlope
        self.slopeUncertainty = slopeUncertainty
        self.firstObserved = firstObserved
        self.lastObserved = lastObserved
        self.stability = stability
        self.usesPriorSlope = usesPriorSlope
    }

    /// `y(x)`: host − originHost − x, in ns.
    @inlinable public func offset(atDeviceOffset x: Double) -> Double {
        offsetAtAnchorNs + drift * (x - anchor)
    }

    /// `u(x)` of the formula above, in ns.
    @inlinable public func uncertaintyNanoseconds(atDeviceOffset x: Double) -> Double {
        let dx = x - anchor
        let outside = x > lastObserved ? x - lastObserved : (x < firstObserved ? firstObserved - x : 0)
        return baseUncertaintyNs + abs(halfGapNs + halfGapSlope * dx) + slopeUncertainty * abs(dx) + stability * outside
    }

    /// Device offset of `deviceTime`, or nil when the subtraction overflows.
    @inlinable public func deviceOffset(_ deviceTime: Int64) -> Int64? {
        let (d, overflow) = deviceTime.subtractingReportingOverflow(originDevice)
        return overflow ? nil : d
    }

    /// The host instant of `deviceTime` on this line, with its uncertainty.
    public func map(deviceTime: Int64) -> MappedInstant? {
        guard let dx = deviceOffset(deviceTime) else { return nil }
        let x = Double(dx)
        return compose(origin: originHost, deviceOffset: dx, offset: offset(atDeviceOffset: x), uncertainty: uncertaintyNanoseconds(atDeviceOffset: x))
    }
}

/// `origin + deviceOffset + offset` as a host instant, and `uncertainty` rounded up.
@inlinable func compose(origin: HostInstant, deviceOffset: Int64, offset: Double, uncertainty: Double) -> MappedInstant? {
    guard offset.isFinite, uncertainty.isFinite, abs(offset) < 4e18, uncertainty < 4e18 else { return nil }
    let (base, o1) = origin.nanoseconds.addingReportingOverflow(deviceOffset)
    let (host, o2) = base.addingReportingOverflow(Int64(offset.rounded()))
    guard !o1, !o2 else { return nil }
    return MappedInstant(host: HostInstant(nanoseconds: host), uncertaintyNs: Int64(max(0, uncertainty).rounded(.up)))
}

/// A point of an after-the-fact refit: the offset and drift of a window centred on `deviceTime`.
///
/// Between knots the offset and uncertainty are interpolated linearly; outside them the
/// nearest knot's drift extrapolates and its uncertainty grows by `ClockLine.stability`.
public struct ClockKnot: Sendable, Equatable, Codable {
    /// Device time of the knot.
    public var deviceTime: Int64
    /// `host − originHost − (deviceTime − originDevice)` at the knot, ns (origin of the segment's line).
    public var offsetNs: Double
    /// Local drift.
    public var drift: Double
    /// Uncertainty at the knot, ns.
    public var uncertaintyNs: Double

    public init(deviceTime: Int64, offsetNs: Double, drift: Double, uncertaintyNs: Double) {
        self.deviceTime = deviceTime
        self.offsetNs = offsetNs
        self.drift = drift
        self.uncertaintyNs = uncertaintyNs
    }
}

/// One stretch of a device clock that a single (slowly varying) line describes: from a start
/// (first observation, reset or rate change) to the next one.
public struct ClockSegment: Sendable, Equatable, Codable {
    /// Position in the model's list (0 is the first segment the model ever saw).
    public var index: Int
    /// Why it started.
    public var reason: SegmentStartReason
    /// Device time of its first and last observation.
    public var firstDeviceTime: Int64
    public var lastDeviceTime: Int64
    /// Host time of its first and last observation (the arrival, or the reply of an exchange).
    public var firstHost: HostInstant
    public var lastHost: HostInstant
    /// Observations it holds.
    public var observationCount: Int
    /// Index of its first observation in the stream the model was fed (0-based).
    public var firstObservationIndex: Int
    /// The line: for a live model the latest window's fit (valid near `lastDeviceTime`); for a
    /// closed segment the fit when it closed; for a refit the fit over the whole segment.
    public var line: ClockLine
    /// Refit only: the offset along the segment, window by window. Empty for live models.
    public var knots: [ClockKnot]

    public init(
        index: Int, reason: SegmentStartReason, firstDeviceTime: Int64, lastDeviceTime: Int64, firstHost: HostInstant,
        lastHost: HostInstant, observationCount: Int, firstObservationIndex: Int, line: ClockLine, knots: [ClockKnot] = []
    ) {
        self.index = index
        self.reason = reason
        self.firstDeviceTime = firstDeviceTime
        self.lastDeviceTime = lastDeviceTime
        self.firstHost = firstHost
        self.lastHost = lastHost
        self.observationCount = observationCount
        self.firstObservationIndex = firstObservationIndex
        self.line = line
        self.knots = knots
    }

    /// Host − device offset at the segment's first observation, ns.
    public var offsetNs: Double {
        line.offset(atDeviceOffset: Double(firstDeviceTime &- line.originDevice)) + Double(line.originHost.nanoseconds &- line.originDevice)
    }

    /// Drift of the segment's line (1e-6 is 1 ppm).
    public var drift: Double { line.drift }

    /// True when `deviceTime` lies within the device times this segment observed.
    public func contains(deviceTime: Int64) -> Bool { deviceTime >= firstDeviceTime && deviceTime <= lastDeviceTime }

    /// The host instant of `deviceTime` in this segment: through the knots when refitted,
    /// through the line otherwise.
    public func map(deviceTime: Int64) -> MappedInstant? {
        guard !knots.isEmpty else { return line.map(deviceTime: deviceTime) }
        guard let dx = line.deviceOffset(deviceTime) else { return nil }
        // Last knot at or before deviceTime.
        var lo = 0
        var hi = knots.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if knots[mid].deviceTime <= deviceTime { lo = mid + 1 } else { hi = mid }
        }
        let i = lo - 1
        let offset: Double
        let u: Double
        if i < 0 {
            let k = knots[0]
            let d = Double(deviceTime &- k.deviceTime)
            offset = k.offsetNs + k.drift * d
            u = k.uncertaintyNs + line.stability * abs(d)
        } else if i == knots.count - 1 {
            let k = knots[i]
            let d = Double(deviceTime &- k.deviceTime)
            offset = k.offsetNs + k.drift * d
            u = k.uncertaintyNs + line.stability * abs(d)
        } else {
            let a = knots[i]
            let b = knots[i + 1]
            let t = Double(deviceTime &- a.deviceTime) / Double(b.deviceTime &- a.deviceTime)
            offset = a.offsetNs + (b.offsetNs - a.offsetNs) * t
            u = a.uncertaintyNs + (b.uncertaintyNs - a.uncertaintyNs) * t
        }
        return compose(origin: line.originHost, deviceOffset: dx, offset: offset, uncertainty: u)
    }
}

extension Array where Element == ClockSegment {
    /// The last segment that started at or before `host` (by its first observation's host time):
    /// the segment a sample received at `host` most likely belongs to.
    public func segment(receivedAt host: HostInstant) -> ClockSegment? {
        var lo = 0
        var hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if self[mid].firstHost <= host { lo = mid + 1 } else { hi = mid }
        }
        return lo > 0 ? self[lo - 1] : first
    }
}
