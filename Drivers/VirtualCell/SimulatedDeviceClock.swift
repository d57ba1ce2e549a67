import OperandoCore

/// The clock of a simulated instrument: a fixed function of the host clock, so a test knows the
/// truth exactly.
///
///     device_ns = offsetNs + host_ns + drift · host_ns      (drift = driftPPM · 1e-6)
///
/// where host_ns is CLOCK_MONOTONIC_RAW. A real oscillator wanders; this one runs at a constant
/// rate, which is what a test of the clock models needs (the models' behaviour on wandering,
/// resets and rate steps is measured by `operando-bench sync`).
public struct SimulatedDeviceClock: Sendable, Equatable {
    /// How much faster than the host the device clock runs, ppm.
    public var driftPPM: Double
    /// Device time at host time 0, ns.
    public var offsetNs: Int64

    public init(driftPPM: Double, offsetNs: Int64) {
        self.driftPPM = driftPPM
        self.offsetNs = offsetNs
    }

    /// The device clock at host instant `t`, ns (rounded down).
    public func deviceNanoseconds(at t: HostInstant) -> Int64 {
        offsetNs &+ t.nanoseconds &+ Int64((Double(t.nanoseconds) * driftPPM * 1e-6).rounded(.down))
    }

    /// The host instant (ns, fractional) at which the device clock read `deviceNs`: the truth a
    /// test compares a clock model's mapping with.
    public func hostNanoseconds(atDevice deviceNs: Int64) -> Double {
        Double(deviceNs &- offsetNs) / (1 + driftPPM * 1e-6)
    }
}
