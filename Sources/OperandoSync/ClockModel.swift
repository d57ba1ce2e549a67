import OperandoCore

// OperandoSync: device clock models. Every device is a clock domain; a model maps its timestamps
// onto the host timeline (CLOCK_MONOTONIC_RAW ns) with an uncertainty, detects resets and rate
// changes (a new segment, never a bent line), and keeps memory bounded. Everything here is a
// pure value type: no I/O, no threads, no clocks. The caller feeds observations and applies the
// results.

/// A device timestamp placed on the host timeline.
public struct MappedInstant: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The host instant (CLOCK_MONOTONIC_RAW ns) at which the device timestamp was taken.
    public var host: HostInstant
    /// Half-width, in ns (rounded up), of the interval around `host` that holds the true instant.
    ///
    /// It is meant to cover the true error for at least 99 % of mapped timestamps under the
    /// model's stated assumptions (see `ClockLine.uncertaintyNanoseconds(atDeviceOffset:)`).
    public var uncertaintyNs: Int64

    @inlinable public init(host: HostInstant, uncertaintyNs: Int64) {
        self.host = host
        self.uncertaintyNs = uncertaintyNs
    }

    public var description: String { "\(host) ± \(uncertaintyNs)ns" }
}

/// One bracketed query of a device clock: the host read its clock, asked the device for its
/// time, and read its clock again when the answer came back.
///
/// The device read its clock somewhere in `[hostBefore, hostAfter]`; half the round trip bounds
/// the error of one exchange (linuxptp's sysoff and NTP use the same bracket).
public struct BracketedExchange: Sendable, Hashable, Codable {
    /// Host time just before the request was sent.
    public var hostBefore: HostInstant
    /// The device's clock in its reply, in device nanoseconds.
    public var deviceTime: Int64
    /// Host time just after the reply was received.
    public var hostAfter: HostInstant

    @inlinable public init(hostBefore: HostInstant, deviceTime: Int64, hostAfter: HostInstant) {
        self.hostBefore = hostBefore
        self.deviceTime = deviceTime
        self.hostAfter = hostAfter
    }

    /// `hostAfter − hostBefore`.
    @inlinable public var roundTripNs: Int64 { hostAfter.nanoseconds &- hostBefore.nanoseconds }
}

/// One device-stamped sample of a one-way stream and the host time at which it arrived.
///
/// Transport and queueing only ever add delay, so the arrival is never earlier than the instant
/// the device stamped (less a constant floor, see `ClockModelConfiguration.latencyFloorNs`).
public struct OneWaySample: Sendable, Hashable, Codable {
    /// The device's timestamp of the sample, in device nanoseconds.
    public var deviceTime: Int64
    /// Host time at which the read returned with the sample.
    public var hostArrival: HostInstant

    @inlinable public init(deviceTime: Int64, hostArrival: HostInstant) {
        self.deviceTime = deviceTime
        self.hostArrival = hostArrival
    }
}

/// One request/reply round trip of a transport, for devices without a clock.
public struct RoundTrip: Sendable, Hashable, Codable {
    /// Host time just before the request was sent.
    public var sent: HostInstant
    /// Host time just after the reply was received.
    public var received: HostInstant

    @inlinable public init(sent: HostInstant, received: HostInstant) {
        self.sent = sent
        self.received = received
    }

    /// `received − sent`.
    @inlinable public var nanoseconds: Int64 { received.nanoseconds &- sent.nanoseconds }
}

/// Why a clock segment started.
public enum SegmentStartReason: String, Sendable, Codable, Equatable {
    /// The first observation of the device.
    case first
    /// The device clock went backwards, or jumped by more than `resetThresholdNs`: a reset.
    case reset
    /// Observations left the current line on one side, repeatedly, by less than a reset: the
    /// device clock changed rate (or was stepped by a small amount).
    case rateChange = "rate_change"
}

/// Something a model noticed while observing; the caller may log it or store it with the run.
public enum ClockModelEvent: Sendable, Equatable {
    /// A new segment started; the previous one (if any) is closed and listed in `segments`.
    case segmentStarted(index: Int, reason: SegmentStartReason, deviceTime: Int64)
    /// Observations that looked like the start of a change were not confirmed and were dropped
    /// as outliers.
    case outliersDiscarded(count: Int)
    /// The observation was malformed (for example `hostAfter < hostBefore`) and was ignored.
    case invalidObservation
}

/// An estimator that maps a device's timestamps onto the host timeline.
///
/// Feed it observations in the order they happened; ask it to map device timestamps at any
/// time. `map` uses the model as it is now (what a live recording stores); `refit` over the
/// stored raw observations gives the after-the-fact answer.
public protocol ClockModel: Sendable {
    /// What one observation of the device's clock looks like.
    associatedtype Observation: Sendable

    /// Adds one observation; returns what changed, if anything worth reporting.
    @discardableResult mutating func observe(_ observation: Observation) -> ClockModelEvent?

    /// The host instant of a device timestamp with its uncertainty, or nil when the model cannot
    /// place it (no observation yet, or the timestamp lies before the live segment and in no
    /// earlier one). After a reset device times repeat: the bracketed and one-way models also
    /// offer `map(deviceTime:receivedAt:)`, which picks the segment consistent with the arrival.
    func map(deviceTime: Int64) -> MappedInstant?

    /// Closed segments, oldest first, followed by the live one.
    var segments: [ClockSegment] { get }
}
