import Foundation
import OperandoVirtualCell

/// The electrochemistry a PalmSens potentiostat sees when it is wired to the shared
/// `VirtualCell`: a battery, not a noise source.
///
/// Time domain (CA, CP, LSV, CV, OCP, GCD): the cell voltage is
///
///     U = OCV(SOC) + I·R_s + v₁ + v₂
///
/// where v₁ is the charge-transfer pair (R_ct ∥ C_dl, τ₁ = R_ct·C_dl, sub-millisecond) and v₂ a
/// slower diffusion pair (R_d ∥ C_d, τ₂ of seconds), both integrated with backward Euler so any
/// step size is stable. OCV(SOC) is `VirtualCell.openCircuitVoltage` (NMC/graphite, plus a steep
/// end-of-capacity term near empty and full) and the
/// state of charge is the shared cell's: every step calls `VirtualCell.advance(current:…)` with the
/// current that flowed, so the X-ray and AFM simulators follow the charge passed. Because the
/// virtual cell accelerates coulomb counting by its `timeScale`, the capacity seen per device
/// second is `capacityAh·3600 / timeScale` coulombs: a demo cell charges in tens of seconds
/// while the kinetics (R, C, τ) stay in real device seconds, consistent with EIS.
///
/// Frequency domain (EIS): a Randles circuit, Z = R_s + 1 / (1/(R_ct + Z_W) + Q·(jω)^n) with a
/// semi-infinite Warburg element Z_W = σ·ω^(-1/2)·(1 − j). The Nyquist plot is a semicircle of
/// diameter R_ct whose −Z'' maximum sits near ω = 1/(R_ct·C_dl), then a 45° tail.
///
/// Potentials are reported against the reference electrode: E(WE vs RE) = U − `referenceOffsetV`.
/// With the default offset 0 the reference is the negative electrode (a two-electrode battery
/// measurement); set it near the OCV to run the public ±0.5 V example scripts around equilibrium.
public struct PalmSensCellModel: Sendable {
    public struct Parameters: Sendable {
        /// Series (electrolyte + contact) resistance R_s, Ω.
        public var seriesOhms = 20.0
        /// Charge-transfer resistance R_ct, Ω.
        public var chargeTransferOhms = 50.0
        /// Double-layer capacitance C_dl, F (also the CPE's Q, F·s^(n−1)).
        public var doubleLayerFarads = 2e-6
        /// CPE exponent n (1 = ideal capacitor).
        public var cpeExponent = 0.95
        /// Warburg coefficient σ, Ω·s^(−1/2).
        public var warburgSigma = 8.0
        /// Diffusion pair of the time-domain model: R_d (Ω) and C_d (F); τ₂ = R_d·C_d.
        public var diffusionOhms = 30.0
        public var diffusionFarads = 0.1
        /// End-of-capacity term added to the shared cell's OCV curve: ±`endOfCapacityVolts`·
        /// exp(−distance/`endOfCapacityWidth`) from the empty and full ends, so the voltage dives
        /// below a 3.0 V discharge cut-off and climbs past a 4.2 V charge cut-off as a real cell
        /// does (the shared curve alone stays between 3.17 V and 4.23 V). Negligible in between.
        public var endOfCapacityVolts = 0.5
        public var endOfCapacityWidth = 0.02
        /// Where the reference electrode sits on the cell voltage scale, V.
        public var referenceOffsetV = 0.0
        /// Measurement noise: potential (V, 1σ), current (A, 1σ, plus `currentNoiseRelative`
        /// of the selected range's full scale), impedance (relative, 1σ).
        public var potentialNoiseV = 50e-6
        public var currentNoiseA = 0.5e-9
        public var currentNoiseRelative = 2e-4
        public var impedanceNoiseRelative = 2e-3
        public init() {}
    }

    public let parameters: Parameters
    public let cell: VirtualCell
    /// Charge-transfer and diffusion pair voltages, V.
    public private(set) var v1 = 0.0
    public private(set) var v2 = 0.0
    /// The current that flowed in the last step, A (positive charges the cell).
    public private(set) var current = 0.0

    public init(cell: VirtualCell, parameters: Parameters = Parameters()) {
        self.cell = cell
        self.parameters = parameters
    }

    /// Coulombs per unit state of charge, in device seconds.
    public var effectiveCapacityCoulombs: Double {
        cell.parameters.capacityAh * 3600 / max(cell.parameters.timeScale, 1e-12)
    }

    public var stateOfCharge: Double { cell.snapshot.stateOfCharge }

    public var openCircuitVoltage: Double { openCircuitVoltage(stateOfCharge: stateOfCharge) }

    /// The shared cell's OCV curve plus the end-of-capacity term.
    public func openCircuitVoltage(stateOfCharge s: Double) -> Double {
        let x = min(max(s, 0), 1)
        let p = parameters
        let ends = p.endOfCapacityVolts * (exp(-(1 - x) / p.endOfCapacityWidth) - exp(-x / p.endOfCapacityWidth))
        return VirtualCell.openCircuitVoltage(stateOfCharge: x) + ends
    }

    /// The cell voltage with current `i` flowing now, V.
    public func cellVoltage(current i: Double) -> Double {
        openCircuitVoltage + i * parameters.seriesOhms + v1 + v2
    }

    /// E (WE vs RE) with the last current flowing.
    public var electrodePotential: Double { cellVoltage(current: current) - parameters.referenceOffsetV }

    /// The control applied over a step.
    public enum Control: Sendable, Equatable {
        case openCircuit
        /// Potentiostatic: WE vs RE potential, V, with the physical current limited to ±`limit` A.
        case potential(Double, limit: Double)
        /// Galvanostatic: current, A.
        case current(Double)
    }

    /// Integrates `seconds` of device time under `control`, in sub-steps of at most `maxStep`.
    public mutating func advance(seconds: Double, control: Control, maxStep: Double = 0.01) {
        guard seconds > 0 else {
            if case .potential = control { _ = solve(dt: 0, control: control) }
            return
        }
        let steps = min(2000, max(1, Int((seconds / maxStep).rounded(.up))))
        let dt = seconds / Double(steps)
        for _ in 0..<steps { step(dt: dt, control: control) }
    }

    private func pairCoefficients(dt: Double) -> (a1: Double, b1: Double, a2: Double, b2: Double) {
        let p = parameters
        let tau1 = p.chargeTransferOhms * p.doubleLayerFarads
        let tau2 = p.diffusionOhms * p.diffusionFarads
        let a1 = 1 / (1 + dt / tau1)
        let a2 = 1 / (1 + dt / tau2)
        // Backward Euler: v' = a·v + b·I, b = R·(1 − a) (so v → I·R in steady state).
        return (a1, p.chargeTransferOhms * (1 - a1), a2, p.diffusionOhms * (1 - a2))
    }

    private func solve(dt: Double, control: Control) -> Double {
        switch control {
        case .openCircuit: return 0
        case .current(let i): return i
        case .potential(let e, let limit):
            let c = pairCoefficients(dt: dt)
            let s = stateOfCharge
            let h = 1e-4
            let slope = (openCircuitVoltage(stateOfCharge: min(1, s + h))
                - openCircuitVoltage(stateOfCharge: max(0, s - h))) / (min(1, s + h) - max(0, s - h))
            let k = slope * dt / effectiveCapacityCoulombs
            let target = e + parameters.referenceOffsetV
            let i = (target - openCircuitVoltage - c.a1 * v1 - c.a2 * v2) / (parameters.seriesOhms + c.b1 + c.b2 + k)
            return min(limit, max(-limit, i))
        }
    }

    private mutating func step(dt: Double, control: Control) {
        let i = solve(dt: dt, control: control)
        let c = pairCoefficients(dt: dt)
        v1 = c.a1 * v1 + c.b1 * i
        v2 = c.a2 * v2 + c.b2 * i
        current = i
        cell.advance(current: i, hostSeconds: dt)
    }

    /// The Randles impedance at `frequency` Hz (noise-free): (Z', Z''), Ω; Z'' < 0 when capacitive.
    public func impedance(frequency: Double) -> (real: Double, imaginary: Double) {
        let p = parameters
        let w = 2 * Double.pi * max(frequency, 1e-9)
        // Z_W = σ ω^-1/2 (1 − j)
        let zwR = p.warburgSigma / w.squareRoot()
        let faradaicR = p.chargeTransferOhms + zwR
        let faradaicI = -zwR
        // Admittance of the faradaic branch: 1 / (a + jb)
        let den = faradaicR * faradaicR + faradaicI * faradaicI
        var yR = faradaicR / den
        var yI = -faradaicI / den
        // CPE admittance Q (jω)^n = Q ω^n (cos nπ/2 + j sin nπ/2)
        let mag = p.doubleLayerFarads * pow(w, p.cpeExponent)
        yR += mag * cos(p.cpeExponent * .pi / 2)
        yI += mag * sin(p.cpeExponent * .pi / 2)
        let yDen = yR * yR + yI * yI
        return (p.seriesOhms + yR / yDen, -yI / yDen)
    }
}

/// The current ranges of a MethodSCRIPT instrument family, with the indices the device reports in
/// a package's `2XX` metadata (from the public mscript.py tables).
public struct PalmSensCurrentRanges: Sendable {
    /// (index, full scale in A), ascending by full scale.
    public let ranges: [(index: Int, fullScale: Double)]

    public static func forFamily(_ family: String, highSpeed: Bool = false) -> PalmSensCurrentRanges {
        switch family {
        case "espico":
            if highSpeed {
                let fs = [100e-9, 1e-6, 6e-6, 13e-6, 25e-6, 50e-6, 100e-6, 200e-6, 1e-3, 5e-3]
                return PalmSensCurrentRanges(ranges: fs.enumerated().map { (128 + $0.offset, $0.element) })
            }
            let fs = [100e-9, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 63e-6, 125e-6, 250e-6, 500e-6, 1e-3, 5e-3]
            return PalmSensCurrentRanges(ranges: fs.enumerated().map { ($0.offset, $0.element) })
        case "nexus1":
            return PalmSensCurrentRanges(ranges: [
                (16, 100e-12), (0, 1e-9), (1, 10e-9), (2, 100e-9), (3, 1e-6), (4, 10e-6), (5, 100e-6),
                (8, 1e-3), (9, 10e-3), (10, 100e-3), (11, 1.0),
            ])
        default:  // es4_lr, es4_hr: decades 1 nA … 100 mA at indices 3, 6, … 27
            let fs = [1e-9, 10e-9, 100e-9, 1e-6, 10e-6, 100e-6, 1e-3, 10e-3, 100e-3]
            return PalmSensCurrentRanges(ranges: fs.enumerated().map { (3 * ($0.offset + 1), $0.element) })
        }
    }

    /// The position (into `ranges`) of the smallest range whose full scale covers `amps`.
    public func position(covering amps: Double) -> Int {
        ranges.firstIndex(where: { $0.fullScale >= abs(amps) * (1 - 1e-9) }) ?? ranges.count - 1
    }

    public var maximum: Double { ranges.last!.fullScale }
}
