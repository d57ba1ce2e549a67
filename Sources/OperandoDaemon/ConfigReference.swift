/// The configuration reference as Markdown, printed from `ConfigKey.all` (README's table).
public enum ConfigReference {
    public static func markdown() -> String {
        var out = "| table | key | type and bounds | default | meaning |\n| --- | --- | --- | --- | --- |\n"
        for k in ConfigKey.all {
            let type: String = switch k.kind {
            case .integer(let r): "integer \(r.lowerBound)…\(r.upperBound)"
            case .number(let r): "number \(r.lowerBound)…\(r.upperBound)"
            case .string: "string"
            case .bool: "boolean"
            case .choice(let c): c.map { "`\($0)`" }.joined(separator: " ")
            case .transport: "transport"
            case .table: "table"
            }
            let table = k.table == "device" ? "[[device]]" : "[\(k.table)]"
            out += "| \(table) | `\(k.key)` | \(type) | \(k.defaultValue.map { "`\($0)`" } ?? "required") | \(k.doc) |\n"
        }
        return out
    }
}
