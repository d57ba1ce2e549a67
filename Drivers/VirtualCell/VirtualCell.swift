import Foundation
import OperandoCore
import Synchronization

/// The one simulated electrochemical cell that every simulator in a daemon shares, so a
/// simulated recording shows real cross-instrument correlation: the potentiostat charges it,
/// the X-ray detector's nickel line follows its state of charge.
///
/// Model: an NMC/graphite cell. Open-circuit voltage as a smooth function of state of charge,
/// a series resistance and one RC pair, coulomb counting against the rated capacity. Time is
/// accelerated by `timeScale` (cell seconds per host second) so a short demo sees a real change.
public final class VirtualCell: Sendable {
    public struct Parameters: Sendable {
        public var capacityAh: Double = 0.005
        public var seriesOhms: Double = 2.0
        public var rcOhms: Double = 3.0
        public var rcSeconds: Double = 30
        public var lowerCutoffV: Double = 3.0
        public var upperCutoffV: Double = 4.2
        public var initialStateOfCharge: Double = 0.1
        public var timeScale: Double = 600
        public init() {}
    }

    public struct Snapshot: Sendable, Equatable {
        /// 0 (empty) … 1 (full).
        public var stateOfCharge: Double
        public var current: Double
        public var voltage: Double
        public var cycle: Int
        /// Cell seconds since the simulation started.
        public var cellSeconds: Double
    }

    private struct State {
        var soc: Double
        var rcVoltage = 0.0
        var current = 0.0
        var cycle = 0
        var cellSeconds = 0.0
    }

    public let parameters: Parameters
    private let state: Mutex<State>

    public init(_ parameters: Parameters = Parameters()) {
        self.parameters = parameters
        state = Mutex(State(soc: parameters.initialStateOfCharge))
    }

    /// Open-circuit voltage of an NMC/graphite cell: a steep rise when nearly empty, a gentle
    /// slope through the middle, a knee when nearly full.
    public static func openCircuitVoltage(stateOfCharge s: Double) -> Double {
        let x = min(max(s, 0), 1)
        return 3.45 + 0.72 * x - 0.28 * exp(-x * 22) + 0.06 * exp(-(1 - x) * 28)
    }

    /// Applies `current` (A, positive charges the cell) for `hostSeconds` of host time.
    @discardableResult
    public func advance(current: Double, hostSeconds: Double) -> Snapshot {
        state.withLock { s in
            let dt = hostSeconds * parameters.timeScale
            let p = parameters
            s.current = current
            s.soc = min(1, max(0, s.soc + current * dt / (p.capacityAh * 3600)))
            let tau = p.rcSeconds
            let target = current * p.rcOhms
            s.rcVoltage = target + (s.rcVoltage - target) * exp(-dt / tau)
            s.cellSeconds += dt
            return snapshot(s)
        }
    }

    /// Counts a completed charge/discharge cycle.
    public func completeCycle() { state.withLock { $0.cycle += 1 } }

    public var snapshot: Snapshot { state.withLock { snapshot($0) } }

    private func snapshot(_ s: State) -> Snapshot {
        let v = Self.openCircuitVoltage(stateOfCharge: s.soc) + s.current * parameters.seriesOhms + s.rcVoltage
        return Snapshot(stateOfCharge: s.soc, current: s.current, voltage: v, cycle: s.cycle, cellSeconds: s.cellSeconds)
    }
}

/// A small, fast, seedable generator for simulator noise (xorshift64*), so runs are reproducible.
public struct NoiseSource: Sendable {
    private var x: UInt64

    public init(seed: UInt64) { x = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    public mutating func next() -> UInt64 {
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        return x &* 0x2545_F491_4F6C_DD1D
    }

    /// Uniform in [0, 1).
    public mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }

    /// Standard normal (Box–Muller).
    public mutating func gaussian() -> Double {
        let u = max(uniform(), 1e-300)
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * uniform())
    }

    /// Poisson-distributed count with mean `lambda` (exact below 30, normal approximation above).
    public mutating func poisson(_ lambda: Double) -> UInt32 {
        if lambda <= 0 { return 0 }
        if lambda < 30 {
            let l = exp(-lambda)
            var k: UInt32 = 0
            var p = 1.0
            repeat {
                k += 1
                p *= uniform()
            } while p > l
            return k - 1
        }
        return UInt32(max(0, (lambda + lambda.squareRoot() * gaussian()).rounded()))
    }
}
