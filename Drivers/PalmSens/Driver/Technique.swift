import Foundation

/// A technique or protocol the user asked for could not be accepted: names the field (a path such
/// as `steps[2].steps[0].scan_rate_v_per_s`) and why.
public struct TechniqueError: Error, Sendable, Equatable, CustomStringConvertible {
    public var field: String
    public var reason: String
    public init(field: String, _ reason: String) {
        self.field = field
        self.reason = reason
    }
    public var description: String { "\(field): \(reason)" }
}

/// One potential step of a chronoamperometry.
public struct PotentialStep: Codable, Sendable, Equatable {
    public var potentialV: Double
    public var durationS: Double
    public init(potentialV: Double, durationS: Double) {
        self.potentialV = potentialV
        self.durationS = durationS
    }
    enum CodingKeys: String, CodingKey { case potentialV = "potential_v", durationS = "duration_s" }
}

/// One current step of a chronopotentiometry.
public struct CurrentStep: Codable, Sendable, Equatable {
    public var currentA: Double
    public var durationS: Double
    public init(currentA: Double, durationS: Double) {
        self.currentA = currentA
        self.durationS = durationS
    }
    enum CodingKeys: String, CodingKey { case currentA = "current_a", durationS = "duration_s" }
}

/// An electrochemical technique, as users write it in TOML or JSON: an object with `kind` and
/// snake_case fields. Every value is checked when decoded (`TechniqueError` names the field).
///
/// kinds and fields (defaults in brackets):
/// - `ocp`: duration_s, interval_s
/// - `ca`: steps [{potential_v, duration_s}], interval_s
/// - `cp`: steps [{current_a, duration_s}], interval_s
/// - `cv`: begin_v, vertex1_v, vertex2_v, step_v, scan_rate_v_per_s, cycles [1]
/// - `lsv`: begin_v, end_v, step_v, scan_rate_v_per_s
/// - `gcd`: current_a OR c_rate (+ capacity_mah, or the driver's gcd_capacity_mah), upper_limit_v,
///   lower_limit_v, rest_s [0], cycles [1], interval_s [1], max_half_cycle_s [1.5 h / C-rate, or 24 h]
/// - `hold`: potential_v, duration_s, interval_s [1]
/// - `eis`: f_start_hz, f_end_hz, points_per_decade OR points, amplitude_v_rms, dc_bias_v [0]
public enum Technique: Codable, Sendable, Equatable {
    case ocp(durationS: Double, intervalS: Double)
    case chronoamperometry(steps: [PotentialStep], intervalS: Double)
    case chronopotentiometry(steps: [CurrentStep], intervalS: Double)
    case cyclicVoltammetry(beginV: Double, vertex1V: Double, vertex2V: Double, stepV: Double, scanRateVPerS: Double, cycles: Int)
    case linearSweep(beginV: Double, endV: Double, stepV: Double, scanRateVPerS: Double)
    case galvanostaticCycling(GalvanostaticCycling)
    case potentiostaticHold(potentialV: Double, durationS: Double, intervalS: Double)
    case impedance(Impedance)

    /// The `kind` string of the JSON form (also the fixture file name).
    public var kind: String {
        switch self {
        case .ocp: "ocp"
        case .chronoamperometry: "ca"
        case .chronopotentiometry: "cp"
        case .cyclicVoltammetry: "cv"
        case .linearSweep: "lsv"
        case .galvanostaticCycling: "gcd"
        case .potentiostaticHold: "hold"
        case .impedance: "eis"
        }
    }

    public static let kinds = ["ocp", "ca", "cp", "cv", "lsv", "gcd", "hold", "eis"]

    enum Key: String, CodingKey {
        case kind, steps, cycles
        case durationS = "duration_s", intervalS = "interval_s"
        case beginV = "begin_v", vertex1V = "vertex1_v", vertex2V = "vertex2_v", endV = "end_v"
        case stepV = "step_v", scanRate = "scan_rate_v_per_s", potentialV = "potential_v"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let path = Self.path(decoder.codingPath)
        let kind = try c.required(String.self, .kind, path)
        switch kind {
        case "ocp":
            self = .ocp(durationS: try c.required(Double.self, .durationS, path), intervalS: try c.required(Double.self, .intervalS, path))
        case "ca":
            self = .chronoamperometry(steps: try c.required([PotentialStep].self, .steps, path), intervalS: try c.required(Double.self, .intervalS, path))
        case "cp":
            self = .chronopotentiometry(steps: try c.required([CurrentStep].self, .steps, path), intervalS: try c.required(Double.self, .intervalS, path))
        case "cv":
            self = .cyclicVoltammetry(
                beginV: try c.required(Double.self, .beginV, path), vertex1V: try c.required(Double.self, .vertex1V, path),
                vertex2V: try c.required(Double.self, .vertex2V, path), stepV: try c.required(Double.self, .stepV, path),
                scanRateVPerS: try c.required(Double.self, .scanRate, path), cycles: try c.optional(Int.self, .cycles, path) ?? 1)
        case "lsv":
            self = .linearSweep(
                beginV: try c.required(Double.self, .beginV, path), endV: try c.required(Double.self, .endV, path),
                stepV: try c.required(Double.self, .stepV, path), scanRateVPerS: try c.required(Double.self, .scanRate, path))
        case "gcd":
            self = .galvanostaticCycling(try GalvanostaticCycling(from: decoder))
        case "hold":
            self = .potentiostaticHold(
                potentialV: try c.required(Double.self, .potentialV, path), durationS: try c.required(Double.self, .durationS, path),
                intervalS: try c.optional(Double.self, .intervalS, path) ?? 1)
        case "eis":
            self = .impedance(try Impedance(from: decoder))
        default:
            throw TechniqueError(field: Self.join(path, "kind"), "\"\(kind)\" is not a technique; use one of \(Self.kinds.joined(separator: ", "))")
        }
        try validate(path: path)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(kind, forKey: .kind)
        switch self {
        case .ocp(let d, let i):
            try c.encode(d, forKey: .durationS)
            try c.encode(i, forKey: .intervalS)
        case .chronoamperometry(let s, let i):
            try c.encode(s, forKey: .steps)
            try c.encode(i, forKey: .intervalS)
        case .chronopotentiometry(let s, let i):
            try c.encode(s, forKey: .steps)
            try c.encode(i, forKey: .intervalS)
        case .cyclicVoltammetry(let b, let v1, let v2, let st, let r, let n):
            try c.encode(b, forKey: .beginV)
            try c.encode(v1, forKey: .vertex1V)
            try c.encode(v2, forKey: .vertex2V)
            try c.encode(st, forKey: .stepV)
            try c.encode(r, forKey: .scanRate)
            try c.encode(n, forKey: .cycles)
        case .linearSweep(let b, let e, let st, let r):
            try c.encode(b, forKey: .beginV)
            try c.encode(e, forKey: .endV)
            try c.encode(st, forKey: .stepV)
            try c.encode(r, forKey: .scanRate)
        case .galvanostaticCycling(let g): try g.encode(to: encoder)
        case .potentiostaticHold(let e, let d, let i):
            try c.encode(e, forKey: .potentialV)
            try c.encode(d, forKey: .durationS)
            try c.encode(i, forKey: .intervalS)
        case .impedance(let z): try z.encode(to: encoder)
        }
    }

    /// Checks every value; `path` prefixes the field names in errors.
    public func validate(path: String = "") throws {
        func f(_ name: String) -> String { Self.join(path, name) }
        switch self {
        case .ocp(let d, let i):
            try Limits.duration(d, f("duration_s"))
            try Limits.interval(i, f("interval_s"), within: d)
        case .chronoamperometry(let steps, let i):
            guard !steps.isEmpty else { throw TechniqueError(field: f("steps"), "needs at least one {potential_v, duration_s}") }
            for (k, s) in steps.enumerated() {
                try Limits.potential(s.potentialV, f("steps[\(k)].potential_v"))
                try Limits.duration(s.durationS, f("steps[\(k)].duration_s"))
                try Limits.interval(i, f("interval_s"), within: s.durationS)
            }
        case .chronopotentiometry(let steps, let i):
            guard !steps.isEmpty else { throw TechniqueError(field: f("steps"), "needs at least one {current_a, duration_s}") }
            for (k, s) in steps.enumerated() {
                try Limits.current(s.currentA, f("steps[\(k)].current_a"), allowZero: true)
                try Limits.duration(s.durationS, f("steps[\(k)].duration_s"))
                try Limits.interval(i, f("interval_s"), within: s.durationS)
            }
        case .cyclicVoltammetry(let b, let v1, let v2, let st, let r, let n):
            try Limits.potential(b, f("begin_v"))
            try Limits.potential(v1, f("vertex1_v"))
            try Limits.potential(v2, f("vertex2_v"))
            guard v1 != v2 else { throw TechniqueError(field: f("vertex2_v"), "must differ from vertex1_v (\(v1) V)") }
            try Limits.step(st, f("step_v"))
            try Limits.scanRate(r, f("scan_rate_v_per_s"))
            try Limits.count(n, f("cycles"))
        case .linearSweep(let b, let e, let st, let r):
            try Limits.potential(b, f("begin_v"))
            try Limits.potential(e, f("end_v"))
            guard b != e else { throw TechniqueError(field: f("end_v"), "must differ from begin_v (\(b) V)") }
            try Limits.step(st, f("step_v"))
            try Limits.scanRate(r, f("scan_rate_v_per_s"))
        case .galvanostaticCycling(let g): try g.validate(path: path)
        case .potentiostaticHold(let e, let d, let i):
            try Limits.potential(e, f("potential_v"))
            try Limits.duration(d, f("duration_s"))
            try Limits.interval(i, f("interval_s"), within: d)
        case .impedance(let z): try z.validate(path: path)
        }
    }

    static func path(_ codingPath: [any CodingKey]) -> String {
        var s = ""
        for k in codingPath {
            if let i = k.intValue { s += "[\(i)]" } else { s += s.isEmpty ? k.stringValue : "." + k.stringValue }
        }
        return s
    }

    static func join(_ path: String, _ name: String) -> String { path.isEmpty ? name : path + "." + name }
}

/// Galvanostatic charge/discharge: charge at +|I| to `upper_limit_v`, rest, discharge at −|I| to
/// `lower_limit_v`, rest; `cycles` times. The current is `current_a`, or `c_rate` × capacity.
public struct GalvanostaticCycling: Codable, Sendable, Equatable {
    public var currentA: Double?
    public var cRate: Double?
    public var capacityMah: Double?
    public var upperLimitV: Double
    public var lowerLimitV: Double
    public var restS: Double
    public var cycles: Int
    public var intervalS: Double
    /// Safety bound of one half-cycle, s (the limit normally ends it first).
    public var maxHalfCycleS: Double?

    public init(currentA: Double? = nil, cRate: Double? = nil, capacityMah: Double? = nil, upperLimitV: Double, lowerLimitV: Double, restS: Double = 0, cycles: Int = 1, intervalS: Double = 1, maxHalfCycleS: Double? = nil) {
        self.currentA = currentA
        self.cRate = cRate
        self.capacityMah = capacityMah
        self.upperLimitV = upperLimitV
        self.lowerLimitV = lowerLimitV
        self.restS = restS
        self.cycles = cycles
        self.intervalS = intervalS
        self.maxHalfCycleS = maxHalfCycleS
    }

    enum CodingKeys: String, CodingKey {
        case currentA = "current_a", cRate = "c_rate", capacityMah = "capacity_mah", upperLimitV = "upper_limit_v"
        case lowerLimitV = "lower_limit_v", restS = "rest_s", cycles, intervalS = "interval_s", maxHalfCycleS = "max_half_cycle_s"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let p = Technique.path(decoder.codingPath)
        currentA = try c.optional(Double.self, .currentA, p)
        cRate = try c.optional(Double.self, .cRate, p)
        capacityMah = try c.optional(Double.self, .capacityMah, p)
        upperLimitV = try c.required(Double.self, .upperLimitV, p)
        lowerLimitV = try c.required(Double.self, .lowerLimitV, p)
        restS = try c.optional(Double.self, .restS, p) ?? 0
        cycles = try c.optional(Int.self, .cycles, p) ?? 1
        intervalS = try c.optional(Double.self, .intervalS, p) ?? 1
        maxHalfCycleS = try c.optional(Double.self, .maxHalfCycleS, p)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(currentA, forKey: .currentA)
        try c.encodeIfPresent(cRate, forKey: .cRate)
        try c.encodeIfPresent(capacityMah, forKey: .capacityMah)
        try c.encode(upperLimitV, forKey: .upperLimitV)
        try c.encode(lowerLimitV, forKey: .lowerLimitV)
        try c.encode(restS, forKey: .restS)
        try c.encode(cycles, forKey: .cycles)
        try c.encode(intervalS, forKey: .intervalS)
        try c.encodeIfPresent(maxHalfCycleS, forKey: .maxHalfCycleS)
    }

    public func validate(path: String) throws {
        func f(_ name: String) -> String { Technique.join(path, name) }
        switch (currentA, cRate) {
        case (nil, nil): throw TechniqueError(field: f("current_a"), "give current_a (A) or c_rate (with capacity_mah)")
        case (.some, .some): throw TechniqueError(field: f("c_rate"), "give current_a or c_rate, not both")
        case (let i?, nil): try Limits.current(i, f("current_a"), allowZero: false, positive: true)
        case (nil, let r?):
            guard r.isFinite, r >= 0.001, r <= 100 else { throw TechniqueError(field: f("c_rate"), "\(r) is outside 0.001…100 (C/1000 to 100C)") }
        }
        if let q = capacityMah {
            guard q.isFinite, q > 0, q <= 1e6 else { throw TechniqueError(field: f("capacity_mah"), "\(q) is outside (0, 1e6] mAh") }
        }
        try Limits.potential(upperLimitV, f("upper_limit_v"))
        try Limits.potential(lowerLimitV, f("lower_limit_v"))
        guard upperLimitV > lowerLimitV else {
            throw TechniqueError(field: f("upper_limit_v"), "\(upperLimitV) V must be above lower_limit_v (\(lowerLimitV) V)")
        }
        guard restS.isFinite, restS >= 0, restS <= 1e7 else { throw TechniqueError(field: f("rest_s"), "\(restS) is outside 0…1e7 s") }
        if restS > 0 { try Limits.interval(intervalS, f("interval_s"), within: restS) }
        try Limits.count(cycles, f("cycles"))
        try Limits.interval(intervalS, f("interval_s"), within: 1e7)
        if let m = maxHalfCycleS {
            try Limits.duration(m, f("max_half_cycle_s"))
            try Limits.interval(intervalS, f("interval_s"), within: m)
        }
    }

    /// The cycling current in A (positive), given the driver's default capacity.
    public func resolvedCurrent(defaultCapacityMah: Double?, path: String = "") throws -> Double {
        if let i = currentA { return abs(i) }
        let r = cRate ?? 0
        guard let q = capacityMah ?? defaultCapacityMah else {
            throw TechniqueError(field: Technique.join(path, "capacity_mah"), "c_rate \(r) needs the cell's capacity: set capacity_mah here or gcd_capacity_mah in the device's settings")
        }
        let i = r * q / 1000
        try Limits.current(i, Technique.join(path, "c_rate"), allowZero: false, positive: true)
        return i
    }

    /// The half-cycle bound in s: `max_half_cycle_s`, else 1.5 h / C-rate, else 24 h.
    public var resolvedMaxHalfCycleS: Double {
        if let m = maxHalfCycleS { return m }
        if let r = cRate { return min(1e7, (1.5 * 3600 / r).rounded()) }
        return 86400
    }
}

/// Potentiostatic EIS: a frequency scan at `amplitude_v_rms` around `dc_bias_v`.
public struct Impedance: Codable, Sendable, Equatable {
    public var fStartHz: Double
    public var fEndHz: Double
    public var pointsPerDecade: Double?
    public var points: Int?
    public var amplitudeVRms: Double
    public var dcBiasV: Double

    public init(fStartHz: Double, fEndHz: Double, pointsPerDecade: Double? = nil, points: Int? = nil, amplitudeVRms: Double, dcBiasV: Double = 0) {
        self.fStartHz = fStartHz
        self.fEndHz = fEndHz
        self.pointsPerDecade = pointsPerDecade
        self.points = points
        self.amplitudeVRms = amplitudeVRms
        self.dcBiasV = dcBiasV
    }

    enum CodingKeys: String, CodingKey {
        case fStartHz = "f_start_hz", fEndHz = "f_end_hz", pointsPerDecade = "points_per_decade", points
        case amplitudeVRms = "amplitude_v_rms", dcBiasV = "dc_bias_v"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let p = Technique.path(decoder.codingPath)
        fStartHz = try c.required(Double.self, .fStartHz, p)
        fEndHz = try c.required(Double.self, .fEndHz, p)
        pointsPerDecade = try c.optional(Double.self, .pointsPerDecade, p)
        points = try c.optional(Int.self, .points, p)
        amplitudeVRms = try c.required(Double.self, .amplitudeVRms, p)
        dcBiasV = try c.optional(Double.self, .dcBiasV, p) ?? 0
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(fStartHz, forKey: .fStartHz)
        try c.encode(fEndHz, forKey: .fEndHz)
        try c.encodeIfPresent(pointsPerDecade, forKey: .pointsPerDecade)
        try c.encodeIfPresent(points, forKey: .points)
        try c.encode(amplitudeVRms, forKey: .amplitudeVRms)
        try c.encode(dcBiasV, forKey: .dcBiasV)
    }

    public func validate(path: String) throws {
        func f(_ name: String) -> String { Technique.join(path, name) }
        for (v, n) in [(fStartHz, "f_start_hz"), (fEndHz, "f_end_hz")] {
            guard v.isFinite, v >= 1e-5, v <= 1e6 else { throw TechniqueError(field: f(n), "\(v) is outside 1e-5…1e6 Hz") }
        }
        guard fStartHz != fEndHz else { throw TechniqueError(field: f("f_end_hz"), "must differ from f_start_hz") }
        switch (pointsPerDecade, points) {
        case (nil, nil): throw TechniqueError(field: f("points_per_decade"), "give points_per_decade or points")
        case (.some, .some): throw TechniqueError(field: f("points"), "give points_per_decade or points, not both")
        case (let d?, nil): guard d.isFinite, d >= 1, d <= 100 else { throw TechniqueError(field: f("points_per_decade"), "\(d) is outside 1…100") }
        case (nil, let n?): guard (2...1000).contains(n) else { throw TechniqueError(field: f("points"), "\(n) is outside 2…1000") }
        }
        guard amplitudeVRms.isFinite, amplitudeVRms >= 1e-4, amplitudeVRms <= 0.5 else {
            throw TechniqueError(field: f("amplitude_v_rms"), "\(amplitudeVRms) is outside 0.0001…0.5 V rms")
        }
        try Limits.potential(dcBiasV, f("dc_bias_v"))
    }

    /// Number of frequencies: `points`, or points_per_decade × decades + 1.
    public var pointCount: Int {
        if let points { return points }
        let decades = abs(log10(fStartHz / fEndHz))
        return max(2, Int((decades * (pointsPerDecade ?? 10)).rounded()) + 1)
    }
}

/// A step of a protocol: a technique, or a block repeated `count` times.
public indirect enum ProtocolStep: Codable, Sendable, Equatable {
    case technique(Technique)
    case `repeat`(count: Int, steps: [ProtocolStep])

    enum Key: String, CodingKey { case `repeat`, steps, kind }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let p = Technique.path(decoder.codingPath)
        if c.contains(.repeat) {
            let n = try c.required(Int.self, .repeat, p)
            try Limits.count(n, Technique.join(p, "repeat"))
            let steps = try c.required([ProtocolStep].self, .steps, p)
            guard !steps.isEmpty else { throw TechniqueError(field: Technique.join(p, "steps"), "a repeat block needs at least one step") }
            self = .repeat(count: n, steps: steps)
        } else if c.contains(.kind) {
            self = .technique(try Technique(from: decoder))
        } else {
            throw TechniqueError(field: p.isEmpty ? "step" : p, "a step is a technique (with \"kind\") or {\"repeat\": n, \"steps\": [...]}")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .technique(let t): try t.encode(to: encoder)
        case .repeat(let n, let steps):
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(n, forKey: .repeat)
            try c.encode(steps, forKey: .steps)
        }
    }
}

/// An ordered list of steps run as one script, e.g. formation: 3 GCD cycles at C/10, then
/// 10 × [one GCD cycle at C/2, EIS at full discharge]. JSON: `{"kind": "protocol", "steps": [...]}`.
public struct ExperimentProtocol: Codable, Sendable, Equatable {
    public var steps: [ProtocolStep]
    public init(steps: [ProtocolStep]) { self.steps = steps }

    enum Key: String, CodingKey { case kind, steps }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let p = Technique.path(decoder.codingPath)
        steps = try c.required([ProtocolStep].self, .steps, p)
        guard !steps.isEmpty else { throw TechniqueError(field: Technique.join(p, "steps"), "a protocol needs at least one step") }
        guard Self.depth(steps) <= 4 else { throw TechniqueError(field: Technique.join(p, "steps"), "repeat blocks nest deeper than 4") }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode("protocol", forKey: .kind)
        try c.encode(steps, forKey: .steps)
    }

    static func depth(_ steps: [ProtocolStep]) -> Int {
        steps.map { if case .repeat(_, let s) = $0 { 1 + depth(s) } else { 0 } }.max() ?? 0
    }
}

/// What a user hands the driver: one technique, or a protocol.
public enum Program: Codable, Sendable, Equatable {
    case technique(Technique)
    case `protocol`(ExperimentProtocol)

    enum Key: String, CodingKey { case kind }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let kind = try c.required(String.self, .kind, Technique.path(decoder.codingPath))
        self = kind == "protocol" ? .protocol(try ExperimentProtocol(from: decoder)) : .technique(try Technique(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .technique(let t): try t.encode(to: encoder)
        case .protocol(let p): try p.encode(to: encoder)
        }
    }

    /// Decodes JSON text; errors are `TechniqueError`s naming the field.
    public static func decode(json: String) throws -> Program {
        do {
            return try JSONDecoder().decode(Program.self, from: Data(json.utf8))
        } catch let e as TechniqueError {
            throw e
        } catch DecodingError.typeMismatch(let type, let ctx) {
            throw TechniqueError(field: Technique.path(ctx.codingPath), "expected \(type)")
        } catch DecodingError.dataCorrupted(let ctx) {
            throw TechniqueError(field: ctx.codingPath.isEmpty ? "json" : Technique.path(ctx.codingPath), "not valid JSON: \(ctx.debugDescription)")
        } catch {
            throw TechniqueError(field: "json", "\(error)")
        }
    }

    public var kind: String {
        switch self {
        case .technique(let t): t.kind
        case .protocol: "protocol"
        }
    }

    /// The JSON form (sorted keys), as recorded in the technique-start event.
    public var json: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return (try? String(decoding: e.encode(self), as: UTF8.self)) ?? "{}"
    }
}

enum Limits {
    static func potential(_ v: Double, _ field: String) throws {
        guard v.isFinite, abs(v) <= 10 else { throw TechniqueError(field: field, "\(v) is outside −10…10 V") }
    }
    static func current(_ v: Double, _ field: String, allowZero: Bool, positive: Bool = false) throws {
        guard v.isFinite, abs(v) <= 1 else { throw TechniqueError(field: field, "\(v) is outside −1…1 A") }
        if positive { guard v > 0 else { throw TechniqueError(field: field, "\(v) must be above 0 A (the sign is set per half-cycle)") } }
        if !allowZero { guard v != 0 else { throw TechniqueError(field: field, "must not be 0 A") } }
        if v != 0 { guard abs(v) >= 1e-12 else { throw TechniqueError(field: field, "\(v) is below 1 pA") } }
    }
    static func duration(_ v: Double, _ field: String) throws {
        guard v.isFinite, v > 0, v <= 1e7 else { throw TechniqueError(field: field, "\(v) is outside (0, 1e7] s") }
    }
    static func interval(_ v: Double, _ field: String, within d: Double) throws {
        guard v.isFinite, v >= 0.001, v <= 3600 else { throw TechniqueError(field: field, "\(v) is outside 0.001…3600 s") }
        guard v <= d else { throw TechniqueError(field: field, "\(v) s is longer than the \(d) s it samples") }
    }
    static func step(_ v: Double, _ field: String) throws {
        guard v.isFinite, v >= 1e-6, v <= 0.25 else { throw TechniqueError(field: field, "\(v) is outside 1e-6…0.25 V") }
    }
    static func scanRate(_ v: Double, _ field: String) throws {
        guard v.isFinite, v >= 1e-6, v <= 10 else { throw TechniqueError(field: field, "\(v) is outside 1e-6…10 V/s (1 µV/s to 10 V/s)") }
    }
    static func count(_ v: Int, _ field: String) throws {
        guard (1...100_000).contains(v) else { throw TechniqueError(field: field, "\(v) is outside 1…100000") }
    }
}

extension KeyedDecodingContainer {
    func required<T: Decodable>(_ type: T.Type, _ key: K, _ path: String) throws -> T {
        guard contains(key) else { throw TechniqueError(field: Technique.join(path, key.stringValue), "is required") }
        return try typed(type, key, path)
    }
    func optional<T: Decodable>(_ type: T.Type, _ key: K, _ path: String) throws -> T? {
        guard contains(key), (try? decodeNil(forKey: key)) == false else { return nil }
        return try typed(type, key, path)
    }
    private func typed<T: Decodable>(_ type: T.Type, _ key: K, _ path: String) throws -> T {
        do {
            return try decode(type, forKey: key)
        } catch let e as TechniqueError {
            throw e
        } catch {
            throw TechniqueError(field: Technique.join(path, key.stringValue), "expected \(Self.describe(type))")
        }
    }
    private static func describe<T>(_ t: T.Type) -> String {
        switch t {
        case is Double.Type: "a number"
        case is Int.Type: "an integer"
        case is String.Type: "a string"
        default: "\(t)"
        }
    }
}
