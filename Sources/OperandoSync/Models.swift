import OperandoCore

/// The clock model of a device whose clock the host queries: each exchange brackets the
/// device's reading between two host timestamps.
///
/// Per block of device time it keeps the exchange with the smallest forward delay and the one
/// with the smallest return delay, measured against the current line (NTP's clock filter and
/// linuxptp's sysoff keep the smallest round trip; keeping each direction's best separately
/// uses the same idea twice). Over each window it fits two envelopes: the line under all
/// `hostAfter` points and the line over all `hostBefore` points, each the linear-programming
/// envelope of Moon et al. (see `Envelope`). The clock is their mean; the uncertainty starts at
/// half their gap, which for a single exchange is half its round trip (see `ClockLine` for the
/// whole formula and `ClockTracker` for windows and change detection). A path slower one way
/// than the other by a constant shifts the result by half the difference; no bracketed method
/// can see that.
///
/// Feed every exchange, in order, with `observe`; map device timestamps with `map`. Store the
/// raw exchanges with the run: `refit` gives the after-the-fact answer from them.
public struct BracketedClockModel: ClockModel {
    public typealias Observation = BracketedExchange
    private var tracker: ClockTracker

    /// - Parameter configuration: must have no `problems` (checked with a precondition).
    public init(configuration: ClockModelConfiguration = .bracketed) {
        tracker = ClockTracker(configuration: configuration, highRule: false)
    }

    public var configuration: ClockModelConfiguration { tracker.configuration }

    @discardableResult public mutating func observe(_ e: BracketedExchange) -> ClockModelEvent? {
        guard e.hostAfter >= e.hostBefore else { return .invalidObservation }
        return tracker.observe(Constraint(device: e.deviceTime, lower: e.hostBefore.nanoseconds, upper: e.hostAfter.nanoseconds))
    }

    public func map(deviceTime: Int64) -> MappedInstant? { tracker.map(deviceTime: deviceTime) }

    /// Maps a device timestamp of something received at `receivedAt`, choosing the segment
    /// consistent with that arrival; nil when none is (see `ClockTracker`).
    public func map(deviceTime: Int64, receivedAt: HostInstant) -> MappedInstant? {
        tracker.map(deviceTime: deviceTime, receivedAt: receivedAt)
    }

    public var segments: [ClockSegment] { tracker.segments }

    /// The live segment.
    public var currentSegment: ClockSegment? { tracker.current?.snapshot() }

    /// Items held in memory (window blocks, held-back observations, closed segments); bounded.
    public var retainedCount: Int { tracker.retainedCount }
}

/// The clock model of a device that stamps the samples it streams: the host only sees when
/// they arrive.
///
/// Transport and queueing only add delay, so the device-to-host line lies under every
/// (device time, arrival) point: per block the model keeps the sample closest to the line, and
/// fits the lower convex hull of each window with the linear-programming criterion (the hull
/// edge over the window's mean device time, Moon et al.; see `Envelope`). Stalls and bursts of
/// delay sit above the envelope and do not move it.
///
/// Uncertainty (one-way part of the `ClockLine` formula): the envelope's noise floor φ, the
/// residual at rank max(2, n/10) of the n block points above the line (a low quantile of
/// the delays, i.e. how densely the data hug the envelope), plus the slope term
/// 2 φ / span · |x − anchor|, the tail misfit, the resolution, and the configured
/// `latencyFloorUncertaintyNs`. A constant latency cannot be seen in a one-way stream: it
/// reads as an offset. Subtract it with `latencyFloorNs` when it is known.
public struct OneWayClockModel: ClockModel {
    public typealias Observation = OneWaySample
    private var tracker: ClockTracker

    /// - Parameter configuration: must have no `problems` (checked with a precondition).
    public init(configuration: ClockModelConfiguration = .oneWay) {
        tracker = ClockTracker(configuration: configuration, highRule: true)
    }

    public var configuration: ClockModelConfiguration { tracker.configuration }

    @discardableResult public mutating func observe(_ s: OneWaySample) -> ClockModelEvent? {
        tracker.observe(Constraint(device: s.deviceTime, lower: nil, upper: s.hostArrival.nanoseconds &- tracker.configuration.latencyFloorNs))
    }

    public func map(deviceTime: Int64) -> MappedInstant? { tracker.map(deviceTime: deviceTime) }

    /// Maps a device timestamp of something received at `receivedAt`, choosing the segment
    /// consistent with that arrival; nil when none is.
    public func map(deviceTime: Int64, receivedAt: HostInstant) -> MappedInstant? {
        tracker.map(deviceTime: deviceTime, receivedAt: receivedAt)
    }

    public var segments: [ClockSegment] { tracker.segments }

    /// The live segment.
    public var currentSegment: ClockSegment? { tracker.current?.snapshot() }

    /// Items held in memory (window blocks, held-back observations, closed segments); bounded.
    public var retainedCount: Int { tracker.retainedCount }
}

/// The "clock model" of a device without a clock (a stage, a shutter): its events are stamped
/// by the host when the read returns.
///
/// It learns the transport's round trips (the last `capacity` of them) and states the latency
/// spread as the uncertainty of a host stamp:
///
///     u = (p99 − p1) / 2 of the recent round trips
///
/// i.e. half the width of the central 98 % of round trips. The stamp itself is returned
/// unchanged: the constant part of the latency (about half the typical round trip) is a bias
/// common to every event of the device and is not removed. When the event is the reply to a
/// request, `map(sent:received:)` gives the tighter bracket: the midpoint ± half that round trip.
public struct HostStampedModel: ClockModel {
    public typealias Observation = RoundTrip

    private var ring: [Int64] = []
    private var head = 0
    /// Round trips remembered. Bounds: ≥ 2.
    public let capacity: Int
    /// Half the p1…p99 spread of the remembered round trips, ns; nil before two round trips.
    public private(set) var latencySpreadNs: Int64?
    /// Median remembered round trip, ns.
    public private(set) var medianRoundTripNs: Int64?

    public init(capacity: Int = 1024) {
        precondition(capacity >= 2, "HostStampedModel capacity must be ≥ 2 (got \(capacity))")
        self.capacity = capacity
    }

    /// Records one round trip; returns `.invalidObservation` when it is negative.
    @discardableResult public mutating func observe(_ r: RoundTrip) -> ClockModelEvent? {
        let ns = r.nanoseconds
        guard ns >= 0 else { return .invalidObservation }
        if ring.count < capacity {
            ring.append(ns)
        } else {
            ring[head] = ns
            head = (head + 1) % capacity
        }
        // A sort of at most `capacity` values per round trip: host-stamped devices are queried
        // a few times a second, not thousands.
        let q = Self.spread(ring)
        latencySpreadNs = q?.spread
        medianRoundTripNs = q?.median
        return nil
    }

    /// (p99 − p1)/2 and the median of `roundTrips` (pure); nil below two values. Quantiles are
    /// nearest-rank.
    public static func spread(_ roundTrips: [Int64]) -> (spread: Int64, median: Int64)? {
        guard roundTrips.count >= 2 else { return nil }
        let s = roundTrips.sorted()
        /// Nearest rank: the smallest value with at least `percent` % of the values at or below it.
        func q(_ percent: Int) -> Int64 { s[min(s.count - 1, max(0, (percent * s.count + 99) / 100 - 1))] }
        return ((q(99) - q(1) + 1) / 2, q(50))
    }

    /// The host stamp with the transport's latency spread as its uncertainty (`deviceTime` is
    /// the host stamp's ns: the device has no clock of its own). Nil before two round trips.
    public func map(deviceTime: Int64) -> MappedInstant? {
        guard let u = latencySpreadNs else { return nil }
        return MappedInstant(host: HostInstant(nanoseconds: deviceTime), uncertaintyNs: u)
    }

    /// `map(deviceTime:)` for a host stamp.
    public func map(hostStamp: HostInstant) -> MappedInstant? { map(deviceTime: hostStamp.nanoseconds) }

    /// An event that happened between sending a request and receiving its reply: the midpoint,
    /// ± half the round trip (rounded up). Needs no history.
    public func map(sent: HostInstant, received: HostInstant) -> MappedInstant {
        let b = HostInstant.bracketMidpoint(sent: sent, received: received)
        return MappedInstant(host: b.instant, uncertaintyNs: b.uncertaintyNs)
    }

    /// A host-stamped device has one clock domain, the host's: no segments.
    public var segments: [ClockSegment] { [] }

    /// Round trips held in memory; at most `capacity`.
    public var retainedCount: Int { ring.count }
}
