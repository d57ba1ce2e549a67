import OperandoCore

/// The documented schema of a run's experiment metadata (`run start --meta-file`).
///
/// Metadata is optional for a run (unless `[daemon] require_metadata`), but metadata that is given
/// must have every required field with the right type; fields the schema does not know are kept
/// as they are.
public enum MetadataSchema {
    public enum Kind: Sendable {
        case string
        case number(ClosedRange<Double>)
        case strings
        case choice([String])
    }

    public struct Field: Sendable {
        public var path: String
        public var kind: Kind
        public var required: Bool
        public var unit: String?
        public var doc: String
    }

    public static let fields: [Field] = [
        Field(path: "cell.format", kind: .string, required: true, unit: nil, doc: "The cell: `CR2032 coin cell`, `pouch`, `capillary`, `AMPIX`, …"),
        Field(path: "cell.working_electrode", kind: .string, required: true, unit: nil, doc: "Working electrode: active material, composition, current collector (`NMC811:C65:PVDF 90:5:5 on Al`)."),
        Field(path: "cell.counter_electrode", kind: .string, required: true, unit: nil, doc: "Counter electrode (`Li metal`, `graphite`)."),
        Field(path: "cell.reference_electrode", kind: .string, required: false, unit: nil, doc: "Reference electrode, if any (`Li metal`, `Ag/AgCl`)."),
        Field(path: "cell.active_mass_mg", kind: .number(0...1e6), required: false, unit: "mg", doc: "Active material mass of the working electrode."),
        Field(path: "cell.electrode_area_cm2", kind: .number(0...1e4), required: false, unit: "cm²", doc: "Geometric area of the working electrode."),
        Field(path: "cell.nominal_capacity_mah", kind: .number(0...1e7), required: false, unit: "mAh", doc: "Capacity that C-rates and state of charge are based on."),
        Field(path: "electrolyte.salt", kind: .string, required: true, unit: nil, doc: "Conducting salt (`LiPF6`)."),
        Field(path: "electrolyte.concentration_mol_per_l", kind: .number(0...100), required: true, unit: "mol/L", doc: "Salt concentration."),
        Field(path: "electrolyte.solvents", kind: .strings, required: true, unit: nil, doc: "Solvents (`[\"EC\", \"DMC\"]`)."),
        Field(path: "electrolyte.solvent_ratio", kind: .string, required: false, unit: nil, doc: "Their ratio (`1:1 v/v`)."),
        Field(path: "electrolyte.additives", kind: .strings, required: false, unit: nil, doc: "Additives (`[\"2 wt% VC\"]`)."),
        Field(path: "separator", kind: .string, required: false, unit: nil, doc: "Separator (`Celgard 2325`, `glass fibre`)."),
        Field(path: "temperature_c", kind: .number(-100...400), required: false, unit: "°C", doc: "Cell temperature."),
        Field(path: "atmosphere", kind: .string, required: false, unit: nil, doc: "Around the cell (`argon glovebox`, `dry air`, `sealed`)."),
        Field(path: "regime", kind: .choice(["operando", "in-situ-paused"]), required: true, unit: nil, doc: "`operando` (measured while cycling) or `in-situ-paused` (measured with the electrochemical control paused)."),
        Field(path: "xray.energy_kev", kind: .number(0...1000), required: false, unit: "keV", doc: "Incident X-ray energy."),
        Field(path: "xray.geometry", kind: .string, required: false, unit: nil, doc: "Geometry (`transmission`, `reflection`, `grazing incidence 0.2°`, `fluorescence 45°`)."),
        Field(path: "xray.beamline", kind: .string, required: false, unit: nil, doc: "Facility and beamline, or lab source."),
        Field(path: "afm.mode", kind: .string, required: false, unit: nil, doc: "AFM mode (`contact`, `tapping`, `PeakForce`, `KPFM`, `c-AFM`)."),
        Field(path: "afm.probe", kind: .string, required: false, unit: nil, doc: "Probe (`SCM-PIT-V2`, tip radius, spring constant)."),
        Field(path: "operator", kind: .string, required: false, unit: nil, doc: "Who runs the experiment."),
        Field(path: "notes", kind: .string, required: false, unit: nil, doc: "Anything else, free form."),
    ]

    /// Every problem of `metadata`, one sentence each (empty when it is valid).
    public static func problems(_ metadata: JSONValue) -> [String] {
        guard case .object = metadata else { return ["metadata must be an object of fields, e.g. {\"cell\": {\"format\": …}, …}"] }
        var p: [String] = []
        for f in fields {
            guard let v = metadata[path: f.path], v != .null else {
                if f.required { p.append("\(f.path) is required: \(f.doc)") }
                continue
            }
            switch (f.kind, v) {
            case (.string, .string(let s)) where !s.isEmpty: break
            case (.number(let range), .number(let d)) where range.contains(d): break
            case (.number(let range), .number(let d)):
                p.append("\(f.path) = \(d) is outside \(range.lowerBound)…\(range.upperBound)\(f.unit.map { " \($0)" } ?? "")")
                continue
            case (.strings, .array(let a)) where a.allSatisfy({ if case .string = $0 { true } else { false } }): break
            case (.strings, .string): break  // one entry
            case (.choice(let options), .string(let s)) where options.contains(s): break
            default:
                p.append("\(f.path) must be \(describe(f.kind))\(f.unit.map { " (\($0))" } ?? ""), got \(quoted(v))")
                continue
            }
        }
        return p
    }

    /// A value as JSON would show it (strings quoted), for messages.
    static func quoted(_ v: JSONValue) -> String {
        if case .string(let s) = v { return "\"\(s)\"" }
        return v.description
    }

    static func describe(_ kind: Kind) -> String {
        switch kind {
        case .string: "a non-empty string"
        case .number(let r): "a number in \(r.lowerBound)…\(r.upperBound)"
        case .strings: "a list of strings"
        case .choice(let o): "one of " + o.map { "\"\($0)\"" }.joined(separator: ", ")
        }
    }

    /// The schema as a Markdown table (README, `operandod --metadata-reference`).
    public static var markdownTable: String {
        var out = "| field | type | required | unit | meaning |\n| --- | --- | --- | --- | --- |\n"
        for f in fields {
            let type = switch f.kind {
            case .string: "string"
            case .number: "number"
            case .strings: "list of strings"
            case .choice(let o): o.map { "`\($0)`" }.joined(separator: " ")
            }
            out += "| `\(f.path)` | \(type) | \(f.required ? "yes" : "") | \(f.unit ?? "") | \(f.doc) |\n"
        }
        return out
    }
}
