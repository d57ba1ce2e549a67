/// A point on the host timeline: nanoseconds of CLOCK_MONOTONIC_RAW since the host booted.
///
/// Every record, frame and event in operandod carries one of these. Absolute (UTC) time is
/// recovered through `RealtimeAnchor`s recorded alongside the data.
public struct HostInstant: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// Nanoseconds of CLOCK_MONOTONIC_RAW.
    public var nanoseconds: Int64

    @inlinable public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    @inlinable public static func < (a: HostInstant, b: HostInstant) -> Bool { a.nanoseconds < b.nanoseconds }

    @inlinable public func advanced(byNanoseconds delta: Int64) -> HostInstant {
        HostInstant(nanoseconds: nanoseconds &+ delta)
    }

    /// Seconds from `earlier` to `self`.
    @inlinable public func seconds(since earlier: HostInstant) -> Double {
        Double(nanoseconds - earlier.nanoseconds) / 1e9
    }

    public var description: String { "\(nanoseconds)ns" }

    /// When a device acted on a request sent at `sent` whose reply arrived at `received`: the
    /// middle of the bracket, and half its width (rounded up) as the uncertainty in ns.
    @inlinable public static func bracketMidpoint(sent: HostInstant, received: HostInstant) -> (instant: HostInstant, uncertaintyNs: Int64) {
        let width = received.nanoseconds &- sent.nanoseconds
        return (HostInstant(nanoseconds: sent.nanoseconds &+ width / 2), (abs(width) + 1) / 2)
    }

    public init(from decoder: any Decoder) throws {
        nanoseconds = try decoder.singleValueContainer().decode(Int64.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(nanoseconds)
    }
}

/// The source of host time. Production uses CLOCK_MONOTONIC_RAW (OperandoIO's `MonotonicRawClock`);
/// tests inject their own so that time never comes from sleeps.
public protocol HostClock: Sendable {
    func now() -> HostInstant
    /// A pairing of host time with wall-clock time, bracketed so its uncertainty is known.
    func realtimeAnchor() -> RealtimeAnchor
}

/// Ties the host timeline to UTC: CLOCK_REALTIME read between two CLOCK_MONOTONIC_RAW reads.
///
/// `utcNanoseconds` corresponds to the midpoint of `before` and `after`; half their distance is
/// the anchor's uncertainty. Anchors are written into every run periodically so a reader can map
/// any host instant to UTC, and refit later if the wall clock was stepped.
public struct RealtimeAnchor: Codable, Sendable, Equatable {
    public var before: HostInstant
    public var after: HostInstant
    /// Nanoseconds since the Unix epoch (CLOCK_REALTIME).
    public var utcNanoseconds: Int64
    /// CLOCK_TAI − CLOCK_REALTIME in seconds, as the kernel reported it (0 when unset).
    public var taiOffsetSeconds: Int64

    public init(before: HostInstant, after: HostInstant, utcNanoseconds: Int64, taiOffsetSeconds: Int64) {
        self.before = before
        self.after = after
        self.utcNanoseconds = utcNanoseconds
        self.taiOffsetSeconds = taiOffsetSeconds
    }

    public var host: HostInstant { HostInstant(nanoseconds: before.nanoseconds + (after.nanoseconds - before.nanoseconds) / 2) }
    public var uncertaintyNanoseconds: Int64 { (after.nanoseconds - before.nanoseconds + 1) / 2 }

    /// UTC nanoseconds for a host instant, assuming no wall-clock step since the anchor.
    public func utcNanoseconds(for instant: HostInstant) -> Int64 {
        utcNanoseconds + (instant.nanoseconds - host.nanoseconds)
    }
}
