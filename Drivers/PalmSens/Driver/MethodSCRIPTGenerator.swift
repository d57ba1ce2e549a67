import Foundation

/// One step-marker site of a generated script: `send_string "STEP <index> <kind>"` announces it.
public struct ScriptStep: Sendable, Equatable, Codable {
    /// 1-based, in script order; a step inside a repeat block keeps its index every iteration.
    public var index: Int
    /// `ocp`, `ca`, `cp`, `cv`, `lsv`, `gcd-charge`, `gcd-rest`, `gcd-discharge`, `hold`, `eis`.
    public var kind: String
    /// The commanded setpoint of the step, when it has one.
    public var setpointV: Double?
    public var setpointA: Double?

    public init(index: Int, kind: String, setpointV: Double? = nil, setpointA: Double? = nil) {
        self.index = index
        self.kind = kind
        self.setpointV = setpointV
        self.setpointA = setpointA
    }

    /// "E = 0.5 V", "I = -0.001 A", or "".
    public var setpointText: String {
        if let v = setpointV { return "E = \(v) V" }
        if let a = setpointA { return "I = \(a) A" }
        return ""
    }
}

/// A generated script and its step table.
public struct GeneratedScript: Sendable, Equatable {
    /// Script lines joined with `\n`, ending with `\n`; send `e\n`, this, then an empty line.
    public var text: String
    public var steps: [ScriptStep]
}

/// Turns a technique or protocol into MethodSCRIPT.
///
/// Layout of every script:
/// - variables: `p` potential, `c` current, `t` device timer (type eb, seconds since `timer_start`),
///   `cyc` cycle (type ja), `stp` step (type jb), plus per-technique ones (`f`, `zr`, `zi`, `edc`,
///   `g<k>` GCD counters, `r<k>` repeat counters, `gon`/`goff` trigger levels);
/// - `timer_start` once, before the first step;
/// - each step starts with its marker: `store_var stp <n>i jb`, `timer_get t`, [`set_gpio gon`],
///   `send_string "STEP <n> <kind>"`, a package `t, stp` (types eb, jb: the marker's device
///   time), [`set_gpio goff`]. The GPIO pulse spans the string and the package;
/// - E/I packages: `t p c cyc stp` (OCP: `t p cyc stp`), EIS packages: `t f zr zi edc cyc stp`;
/// - `cyc` counts GCD cycles and CV scans over the whole script (CV: the device's `C` scan
///   markers advance it within a `nscans` loop);
/// - a GCD half-cycle that reaches its limit sends `LIMIT upper` or `LIMIT lower` before `breakloop`;
/// - `on_finished:` `cell_off`.
public struct MethodSCRIPTGenerator: Sendable {
    /// GPIO pins pulsed at every step start (0 = none).
    public var triggerGPIOMask: Int
    /// A fixed WE current range in A (nil = autoranging 100 nA…5 mA).
    public var currentRangeA: Double?
    /// The capacity basis of C-rates when a GCD does not give `capacity_mah`.
    public var defaultCapacityMah: Double?

    public init(triggerGPIOMask: Int = 0, currentRangeA: Double? = nil, defaultCapacityMah: Double? = nil) {
        self.triggerGPIOMask = triggerGPIOMask
        self.currentRangeA = currentRangeA
        self.defaultCapacityMah = defaultCapacityMah
    }

    public func generate(_ technique: Technique) throws -> GeneratedScript {
        try generate(.technique(technique))
    }

    public func generate(_ program: Program) throws -> GeneratedScript {
        var w = Writer(options: self)
        let steps: [ProtocolStep]
        switch program {
        case .technique(let t): steps = [.technique(t)]
        case .protocol(let p): steps = p.steps
        }
        try w.collectVariables(steps)
        w.header()
        try w.emit(steps, path: "steps")
        w.footer()
        return GeneratedScript(text: w.lines.joined(separator: "\n") + "\n", steps: w.steps)
    }

    /// A number as MethodSCRIPT writes it: an integer with an SI prefix (`500m`, `-1u`, `100k`, `0`).
    public static func number(_ value: Double) -> String {
        if value == 0 || !value.isFinite { return "0" }
        let prefixes: [(String, Double)] = [
            ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1), ("m", 1e-3), ("u", 1e-6),
            ("n", 1e-9), ("p", 1e-12), ("f", 1e-15), ("a", 1e-18),
        ]
        let limit = Double(1 << 27)
        for (p, factor) in prefixes {
            let m = value / factor
            let r = m.rounded()
            if abs(r) >= limit { break }
            if r != 0 && abs(m - r) <= 1e-9 * max(1, abs(m)) { return "\(Int64(r))\(p)" }
        }
        // No exact form: the finest prefix whose mantissa fits.
        for (p, factor) in prefixes.reversed() {
            let r = (value / factor).rounded()
            if abs(r) < limit { return "\(Int64(r))\(p)" }
        }
        return "0"
    }

    private struct Writer {
        let options: MethodSCRIPTGenerator
        var lines: [String] = []
        var steps: [ScriptStep] = []
        var indent = 0
        var needsEIS = false
        var gcdCount = 0
        var repeatCount = 0
        var gcdUsed = 0
        var repeatUsed = 0
        var leaves = 0

        init(options: MethodSCRIPTGenerator) { self.options = options }

        mutating func line(_ s: String) { lines.append(String(repeating: "    ", count: indent) + s) }

        func n(_ v: Double) -> String { MethodSCRIPTGenerator.number(v) }

        /// `opener`, then `body` one level in, then `end`.
        mutating func block(_ opener: String, end: String = "endloop", _ body: (inout Self) throws -> Void) rethrows {
            line(opener)
            indent += 1
            try body(&self)
            indent -= 1
            line(end)
        }

        /// A measurement loop whose body sends one package of `variables`.
        mutating func measure(_ opener: String, _ variables: [String]) {
            block(opener) { $0.package(variables) }
        }

        mutating func collectVariables(_ steps: [ProtocolStep]) throws {
            for s in steps {
                switch s {
                case .technique(.impedance): needsEIS = true
                case .technique(.galvanostaticCycling): gcdCount += 1
                case .technique: break
                case .repeat(_, let inner):
                    repeatCount += 1
                    try collectVariables(inner)
                }
            }
        }

        mutating func header() {
            for v in ["p", "c", "t", "cyc", "stp"] { line("var \(v)") }
            if needsEIS { for v in ["f", "zr", "zi", "edc"] { line("var \(v)") } }
            for k in 0..<gcdCount { line("var g\(k + 1)") }
            for k in 0..<repeatCount { line("var r\(k + 1)") }
            let mask = options.triggerGPIOMask
            if mask != 0 {
                line("var gon")
                line("var goff")
                line("store_var gon \(mask)i aa")
                line("store_var goff 0i aa")
                line("set_gpio_cfg 0b\(String(mask, radix: 2)) 1")
                line("set_gpio goff")
            }
            line("store_var cyc 0i ja")
            line("store_var stp 0i jb")
            line("timer_start")
        }

        mutating func footer() {
            line("on_finished:")
            indent = 1
            line("cell_off")
            indent = 0
        }

        mutating func emit(_ steps: [ProtocolStep], path: String) throws {
            for (k, s) in steps.enumerated() {
                switch s {
                case .technique(let t): try emit(t, path: "\(path)[\(k)]")
                case .repeat(let count, let inner):
                    repeatUsed += 1
                    let r = "r\(repeatUsed)"
                    line("store_var \(r) 0i aa")
                    try block("loop \(r) < \(count)i") {
                        $0.line("add_var \(r) 1i")
                        try $0.emit(inner, path: "\(path)[\(k)].steps")
                    }
                }
            }
        }

        /// The step marker: device time, optional trigger pulse, announcement.
        mutating func marker(_ kind: String, setpointV: Double? = nil, setpointA: Double? = nil) {
            let index = steps.count + 1
            steps.append(ScriptStep(index: index, kind: kind, setpointV: setpointV, setpointA: setpointA))
            line("store_var stp \(index)i jb")
            line("timer_get t")
            if options.triggerGPIOMask != 0 { line("set_gpio gon") }
            line("send_string \"STEP \(index) \(kind)\"")
            line("pck_start")
            line("    pck_add t")
            line("    pck_add stp")
            line("pck_end")
            if options.triggerGPIOMask != 0 { line("set_gpio goff") }
        }

        mutating func package(_ vars: [String]) {
            line("timer_get t")
            line("pck_start")
            for v in vars { line("    pck_add \(v)") }
            line("pck_end")
        }

        mutating func potentiostatic(mode: Int, bandwidth: Double, initialV: Double, cellOn: Bool = true) {
            if leaves > 0 { line("cell_off") }
            leaves += 1
            line("set_pgstat_mode \(mode)")
            line("set_max_bandwidth \(n(bandwidth))")
            if let r = options.currentRangeA {
                line("set_range ba \(n(r))")
                line("set_autoranging ba \(n(r)) \(n(r))")
            } else {
                line("set_range ba 100u")
                line("set_autoranging ba 100n 5m")
            }
            line("set_e \(n(initialV))")
            if cellOn { line("cell_on") }
        }

        mutating func galvanostatic(bandwidth: Double, maxCurrentA: Double, maxPotentialV: Double) {
            if leaves > 0 { line("cell_off") }
            leaves += 1
            let i = n(max(1e-9, maxCurrentA))
            let v = n(max(1, maxPotentialV))
            line("set_pgstat_mode 6")
            line("set_max_bandwidth \(n(bandwidth))")
            line("set_range ab \(v)")
            line("set_autoranging ab \(v) \(v)")
            line("set_range db \(i)")
            line("set_autoranging db \(i) \(i)")
            line("set_i 0")
        }

        func bw(_ interval: Double) -> Double { min(200_000, max(0.001, 1 / interval)) }

        mutating func emit(_ t: Technique, path: String) throws {
            let ei = ["t", "p", "c", "cyc", "stp"]
            switch t {
            case .ocp(let d, let i):
                potentiostatic(mode: 2, bandwidth: bw(i), initialV: 0, cellOn: false)
                marker("ocp")
                measure("meas_loop_ocp p \(n(i)) \(n(d))", ["t", "p", "cyc", "stp"])
            case .chronoamperometry(let s, let i):
                potentiostatic(mode: 2, bandwidth: bw(i), initialV: s[0].potentialV)
                for step in s {
                    marker("ca", setpointV: step.potentialV)
                    measure("meas_loop_ca p c \(n(step.potentialV)) \(n(i)) \(n(step.durationS))", ei)
                }
            case .potentiostaticHold(let e, let d, let i):
                potentiostatic(mode: 2, bandwidth: bw(i), initialV: e)
                marker("hold", setpointV: e)
                measure("meas_loop_ca p c \(n(e)) \(n(i)) \(n(d))", ei)
            case .chronopotentiometry(let s, let i):
                let imax = s.map { abs($0.currentA) }.max() ?? 0
                galvanostatic(bandwidth: bw(i), maxCurrentA: imax, maxPotentialV: 4)
                line("cell_on")
                for step in s {
                    marker("cp", setpointA: step.currentA)
                    measure("meas_loop_cp p c \(n(step.currentA)) \(n(i)) \(n(step.durationS))", ei)
                }
            case .cyclicVoltammetry(let b, let v1, let v2, let st, let r, let cycles):
                potentiostatic(mode: 2, bandwidth: bw(st / r), initialV: b)
                line("add_var cyc 1i")
                marker("cv", setpointV: b)
                let scans = cycles > 1 ? " nscans(\(cycles))" : ""
                measure("meas_loop_cv p c \(n(b)) \(n(v1)) \(n(v2)) \(n(st)) \(n(r))\(scans)", ei)
                if cycles > 1 { line("add_var cyc \(cycles - 1)i") }
            case .linearSweep(let b, let e, let st, let r):
                potentiostatic(mode: 2, bandwidth: bw(st / r), initialV: b)
                marker("lsv", setpointV: b)
                measure("meas_loop_lsv p c \(n(b)) \(n(e)) \(n(st)) \(n(r))", ei)
            case .galvanostaticCycling(let g):
                let current = try g.resolvedCurrent(defaultCapacityMah: options.defaultCapacityMah, path: path)
                let tmax = g.resolvedMaxHalfCycleS
                galvanostatic(bandwidth: bw(g.intervalS), maxCurrentA: current, maxPotentialV: max(abs(g.upperLimitV), abs(g.lowerLimitV)))
                gcdUsed += 1
                let k = "g\(gcdUsed)"
                line("store_var \(k) 0i aa")
                block("loop \(k) < \(g.cycles)i") {
                    $0.line("add_var \(k) 1i")
                    $0.line("add_var cyc 1i")
                    $0.halfCycle(current: current, limit: g.upperLimitV, upper: true, interval: g.intervalS, tmax: tmax)
                    $0.rest(g)
                    $0.halfCycle(current: -current, limit: g.lowerLimitV, upper: false, interval: g.intervalS, tmax: tmax)
                    $0.rest(g)
                }
            case .impedance(let z):
                potentiostatic(mode: 3, bandwidth: min(1e6, 10 * max(z.fStartHz, z.fEndHz)), initialV: z.dcBiasV)
                line("store_var edc \(n(z.dcBiasV)) ci")
                marker("eis", setpointV: z.dcBiasV)
                measure("meas_loop_eis f zr zi \(n(z.amplitudeVRms)) \(n(z.fStartHz)) \(n(z.fEndHz)) \(z.pointCount)i \(n(z.dcBiasV))", ["t", "f", "zr", "zi", "edc", "cyc", "stp"])
            }
        }

        mutating func halfCycle(current: Double, limit: Double, upper: Bool, interval: Double, tmax: Double) {
            marker(upper ? "gcd-charge" : "gcd-discharge", setpointA: current)
            line("cell_on")
            let test = "if p \(upper ? ">" : "<") \(n(limit))"
            block("meas_loop_cp p c \(n(current)) \(n(interval)) \(n(tmax))") {
                $0.package(["t", "p", "c", "cyc", "stp"])
                $0.block(test, end: "endif") {
                    $0.line("send_string \"LIMIT \(upper ? "upper" : "lower")\"")
                    $0.line("breakloop")
                }
            }
        }

        mutating func rest(_ g: GalvanostaticCycling) {
            guard g.restS > 0 else { return }
            marker("gcd-rest", setpointA: 0)
            line("cell_off")
            measure("meas_loop_ocp p \(n(g.intervalS)) \(n(g.restS))", ["t", "p", "cyc", "stp"])
        }
    }
}
