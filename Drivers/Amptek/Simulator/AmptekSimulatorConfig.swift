// The ASCII commands the simulated DP5 understands (Programmer's Guide Rev A7, section 5, table
// 4): a subset large enough for real configurations, each checked against its documented range
// and read back in a fixed format.

/// What a command's parameter may be.
enum SimParameter {
    /// One of these words; the first `prefix` characters suffice ("OF" for "OFF").
    case word([String], prefix: Int = 2)
    /// A number in `range`, read back with `decimals` decimals; "OFF" allowed when `off`.
    case number(ClosedRange<Double>, decimals: Int, off: Bool = false)
    /// One of these whole numbers.
    case oneOf([Int])
}

struct SimCommand {
    var name: String
    var parameter: SimParameter
    /// The value after `RESC=Y` (the guide's default), as read back.
    var resetDefault: String
}

/// The command table and the simulated device's settings.
struct SimConfiguration {
    static let table: [String: SimCommand] = {
        let list: [SimCommand] = [
            SimCommand(name: "AINP", parameter: .word(["POS", "NEG"]), resetDefault: "NEG"),
            SimCommand(name: "AUO1", parameter: .word(["ICR", "PILEUP", "MCSTB", "ONESH", "DETRES", "MCAEN", "PEAKH", "SCA8"], prefix: 99), resetDefault: "ICR"),
            SimCommand(name: "BLRD", parameter: .oneOf([0, 1, 2, 3]), resetDefault: "0"),
            SimCommand(name: "BLRM", parameter: .word(["OFF", "1"], prefix: 1), resetDefault: "OFF"),
            SimCommand(name: "BLRU", parameter: .oneOf([0, 1, 2, 3]), resetDefault: "0"),
            SimCommand(name: "CLCK", parameter: .word(["AUTO", "20", "80"]), resetDefault: "AUTO"),
            SimCommand(name: "CUSP", parameter: .number(-99...99, decimals: 0, off: true), resetDefault: "0"),
            SimCommand(name: "DACO", parameter: .word(["OFF", "FAST", "SHAPED", "INPUT", "PEAK"]), resetDefault: "OFF"),
            SimCommand(name: "GAIA", parameter: .oneOf(Array(1...16)), resetDefault: "8"),
            SimCommand(name: "GAIF", parameter: .number(0.5...1.9999, decimals: 4), resetDefault: "1.0000"),
            SimCommand(name: "GAIN", parameter: .number(0.75...150, decimals: 3), resetDefault: "10.000"),
            SimCommand(name: "GATE", parameter: .word(["OFF", "HIGH", "LOW"]), resetDefault: "OFF"),
            SimCommand(name: "GPED", parameter: .word(["RISING", "FALLING"]), resetDefault: "FALLING"),
            // An SDD's PC5 has a negative bias supply: 0…-1499 V.
            SimCommand(name: "HVSE", parameter: .number(-1499...0, decimals: 0, off: true), resetDefault: "OFF"),
            SimCommand(name: "MCAC", parameter: .oneOf([256, 512, 1024, 2048, 4096, 8192]), resetDefault: "1024"),
            SimCommand(name: "MCAE", parameter: .word(["ON", "OFF"]), resetDefault: "OFF"),
            SimCommand(name: "MCAS", parameter: .word(["NORM", "MCS", "FAST", "PUR", "RTD"]), resetDefault: "NORM"),
            SimCommand(name: "MCST", parameter: .number(0.01...655.35, decimals: 2), resetDefault: "1.00"),
            SimCommand(name: "PAPS", parameter: .word(["8.5", "5", "OFF", "ON"], prefix: 1), resetDefault: "OFF"),
            SimCommand(name: "PDMD", parameter: .word(["NORM", "MIN"]), resetDefault: "NORM"),
            SimCommand(name: "PREC", parameter: .number(0...4_294_967_295, decimals: 0, off: true), resetDefault: "OFF"),
            SimCommand(name: "PRER", parameter: .number(0...4_294_967.29, decimals: 2, off: true), resetDefault: "OFF"),
            SimCommand(name: "PRET", parameter: .number(0...99_999_999.9, decimals: 1, off: true), resetDefault: "OFF"),
            SimCommand(name: "PURE", parameter: .word(["ON", "OFF", "MAX"]), resetDefault: "OFF"),
            SimCommand(name: "RESL", parameter: .number(0...65535, decimals: 0, off: true), resetDefault: "OFF"),
            SimCommand(name: "RTDE", parameter: .word(["ON", "OFF"]), resetDefault: "OFF"),
            SimCommand(name: "SCAH", parameter: .number(0...8191, decimals: 0), resetDefault: "0"),
            SimCommand(name: "SCAL", parameter: .number(0...8191, decimals: 0), resetDefault: "0"),
            SimCommand(name: "SCAO", parameter: .word(["OFF", "HIGH", "LOW"]), resetDefault: "OFF"),
            SimCommand(name: "SCOE", parameter: .word(["RISING", "FALLING"]), resetDefault: "RISING"),
            SimCommand(name: "SCOG", parameter: .oneOf([1, 4, 16]), resetDefault: "1"),
            SimCommand(name: "SYNC", parameter: .word(["INT", "EXT", "FRAME", "NOTIMETAG"]), resetDefault: "INT"),
            SimCommand(name: "TECS", parameter: .number(0...299, decimals: 0, off: true), resetDefault: "OFF"),
            SimCommand(name: "TFLA", parameter: .number(0...51.2, decimals: 3), resetDefault: "0.000"),
            SimCommand(name: "THFA", parameter: .number(0...255.937, decimals: 3), resetDefault: "0.000"),
            SimCommand(name: "THSL", parameter: .number(0...24.9, decimals: 3), resetDefault: "0.000"),
            SimCommand(name: "TLLD", parameter: .number(0...8191, decimals: 0, off: true), resetDefault: "OFF"),
            SimCommand(name: "TPEA", parameter: .number(0.2...102.4, decimals: 3), resetDefault: "1.000"),
            SimCommand(name: "TPFA", parameter: .oneOf([50, 100, 200, 400, 800, 1600, 3200]), resetDefault: "100"),
            SimCommand(name: "TPMO", parameter: .word(["OFF", "+SNG", "+DBL", "-SNG", "-DBL"]), resetDefault: "OFF"),
        ]
        return Dictionary(uniqueKeysWithValues: list.map { ($0.name, $0) })
    }()

    /// How an X-123SDD leaves the factory (what its flash holds at power-up).
    static let factory: [String: String] = {
        var v = Dictionary(uniqueKeysWithValues: table.values.map { ($0.name, $0.resetDefault) })
        v["AINP"] = "POS"
        v["GAIN"] = "10.000"
        v["HVSE"] = "-260"
        v["TECS"] = "220"
        v["PAPS"] = "5"
        v["TPEA"] = "1.000"
        v["TFLA"] = "0.100"
        v["THSL"] = "0.500"
        v["THFA"] = "20.000"
        v["PURE"] = "ON"
        v["RESL"] = "800"
        return v
    }()

    /// The settings in force, as read back (name → value; SCA settings keyed "SCAL#3").
    var values: [String: String]
    /// SCA index (SCAI) for SCAL, SCAH and SCAO.
    var scaIndex = 1

    init(values: [String: String] = SimConfiguration.factory) { self.values = values }

    var channels: Int { Int(values["MCAC"] ?? "1024") ?? 1024 }
    var gain: Double { Double(values["GAIN"] ?? "10") ?? 10 }
    var peakingTimeUs: Double { Double(values["TPEA"] ?? "1") ?? 1 }
    var flatTopUs: Double { Double(values["TFLA"] ?? "0") ?? 0 }
    var slowThresholdPercent: Double { Double(values["THSL"] ?? "0") ?? 0 }
    /// Preset accumulation time, s (nil = off).
    var presetSeconds: Double? { Self.positive(values["PRET"]) }
    /// Preset real time, s (nil = off).
    var presetRealSeconds: Double? { Self.positive(values["PRER"]) }
    /// Preset counts (nil = off).
    var presetCounts: Double? { Self.positive(values["PREC"]) }
    /// Bias setpoint, V (0 when off).
    var highVoltage: Double { Double(values["HVSE"] ?? "") ?? 0 }
    /// Cooler setpoint, K (nil when off).
    var coolerSetpointK: Double? { Self.positive(values["TECS"]) }
    var clock: String { values["CLCK"] ?? "AUTO" }
    /// FPGA clock: AUTO picks 80 MHz below 5 µs peaking time (TPEA description).
    var clock80MHz: Bool { clock == "AUTO" ? peakingTimeUs < 5 : clock == "80" }

    private static func positive(_ text: String?) -> Double? {
        guard let t = text, let v = Double(t), v > 0 else { return nil }
        return v
    }

    private func key(_ name: String) -> String { ["SCAL", "SCAH", "SCAO"].contains(name) ? "\(name)#\(scaIndex)" : name }

    /// The outcome of one command of a text configuration.
    enum Outcome: Equatable {
        case ok
        case badParameter
        case unrecognized
    }

    /// Applies one "NAME=VALUE" command.
    mutating func apply(name: String, value: String?) -> Outcome {
        if name == "RESC" {
            // No error whatever the parameter; only Y/YES resets.
            if let v = value, v == "Y" || v == "YES" {
                values = Dictionary(uniqueKeysWithValues: Self.table.values.map { ($0.name, $0.resetDefault) })
                scaIndex = 1
            }
            return .ok
        }
        if name == "SCAI" {
            guard let v = value, let i = Int(v), (1...16).contains(i) else { return .badParameter }
            scaIndex = i
            return .ok
        }
        guard let command = Self.table[name] else { return .unrecognized }
        guard let raw = value, !raw.isEmpty, raw.count <= 10 else { return .badParameter }
        guard let normalized = Self.normalize(raw, command.parameter) else { return .badParameter }
        if name == "TPEA", let t = Double(normalized) {
            // The range depends on the FPGA clock.
            let range: ClosedRange<Double> = clock == "20" ? 0.8...102.4 : clock == "80" ? 0.2...25.6 : 0.2...102.4
            guard range.contains(t) else { return .badParameter }
        }
        values[key(name)] = normalized
        return .ok
    }

    /// The value read back for `name`: "??" for an unknown command, "?" for RESC.
    func readback(_ name: String, value: String?) -> String {
        if name == "RESC" { return "?" }
        if name == "SCAI" { return value ?? "\(scaIndex)" }
        guard Self.table[name] != nil else { return "??" }
        return values[key(name)] ?? Self.table[name]!.resetDefault
    }

    /// Readback with SCAI steering the following SCA commands, as the device does.
    mutating func readbackSteering(_ name: String, value: String?) -> String {
        if name == "SCAI", let v = value, let i = Int(v), (1...16).contains(i) { scaIndex = i }
        return readback(name, value: value)
    }

    /// The parameter in its read-back form, or nil when it is not allowed.
    static func normalize(_ raw: String, _ p: SimParameter) -> String? {
        switch p {
        case .word(let words, let prefix):
            if let exact = words.first(where: { $0 == raw }) { return exact }
            return words.first { raw.count >= min(prefix, $0.count) && $0.hasPrefix(raw) }
        case .oneOf(let values):
            guard let v = Int(stripUnits(raw) ?? ""), values.contains(v) else { return nil }
            return "\(v)"
        case .number(let range, let decimals, let off):
            if off, raw.count >= 2, "OFF".hasPrefix(raw) { return "OFF" }
            guard let text = stripUnits(raw), let v = Double(text), range.contains(v) else { return nil }
            if off, v == 0 { return "OFF" }
            return fixed(v, decimals)
        }
    }

    /// "10US" → "10": units are allowed and ignored.
    static func stripUnits(_ raw: String) -> String? {
        var end = raw.endIndex
        while end > raw.startIndex, let c = raw[raw.index(before: end)...].first, c.isLetter || c == "%" { end = raw.index(before: end) }
        let number = String(raw[..<end])
        return number.isEmpty ? nil : number
    }

    static func fixed(_ v: Double, _ decimals: Int) -> String {
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let n = (abs(v) * scale).rounded()
        let whole = Int64(n / scale)
        let frac = Int64(n - Double(whole) * scale)
        var s = (v < 0 && n > 0 ? "-" : "") + String(whole)
        if decimals > 0 {
            let f = String(frac)
            s += "." + String(repeating: "0", count: decimals - f.count) + f
        }
        return s
    }
}
