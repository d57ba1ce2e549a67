/// The Zaber ASCII protocol, host side: command encoding and reply parsing.
///
/// Command: `/DEVICE AXIS ID command args:CC\n`. The checksum is the two's complement of the byte
/// sum of everything between `/` and `:`, modulo 256, as two upper-case hex digits.
/// Messages from devices end in `\r\n`:
/// - reply `@01 0 05 OK IDLE -- data` (device, axis, message id, OK/RJ, IDLE/BUSY, warning flag, data);
/// - info `#01 0 05 text` (also the continuation of long replies: `#01 0 05 cont more`);
/// - alert `!01 1 IDLE --` (unsolicited, e.g. when a move ends and comm.alert is 1).
/// Any of them may carry a `:CC` checksum, which is verified when present. A reply whose data
/// ends in `\` continues in `cont` info messages with the same id.
public enum ZaberProtocol {
    /// The checksum of `bytes` (the characters between the leading `/`, `@`, `#` or `!` and `:`).
    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
        let sum = bytes.reduce(UInt32(0)) { $0 &+ UInt32($1) }
        return UInt8(truncatingIfNeeded: 256 &- (sum & 0xFF))
    }

    /// Encodes a command line (with the trailing newline).
    public static func command(device: Int, axis: Int, id: Int?, _ text: String) -> [UInt8] {
        var body = "\(device) \(axis)"
        if let id { body += " " + (id < 10 ? "0\(id)" : "\(id)") }
        if !text.isEmpty { body += " " + text }
        let bytes = Array(body.utf8)
        return [UInt8(ascii: "/")] + bytes + Array(":\(hex(checksum(bytes)))\n".utf8)
    }

    static func hex(_ b: UInt8) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        return String(decoding: [digits[Int(b >> 4)], digits[Int(b & 0xF)]], as: UTF8.self)
    }

    public enum Message: Equatable, Sendable {
        case reply(Reply)
        case info(Info)
        case alert(Alert)
    }

    public struct Reply: Equatable, Sendable {
        public var device: Int
        public var axis: Int
        public var id: Int?
        /// False for a rejection (`RJ`); `data` then holds the reason (BADCOMMAND, BADDATA, …).
        public var accepted: Bool
        public var busy: Bool
        /// `--` when there is none, else the highest-priority flag (`WR`, `FF`, `NI`, …).
        public var warning: String
        public var data: String
        /// The data ended in `\`: more follows in `cont` info messages.
        public var continues: Bool
    }

    public struct Info: Equatable, Sendable {
        public var device: Int
        public var axis: Int
        public var id: Int?
        public var text: String
    }

    public struct Alert: Equatable, Sendable {
        public var device: Int
        public var axis: Int
        public var busy: Bool
        public var warning: String
        public var data: String
    }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var line: String
        public var reason: String
        public var description: String { "\(reason): \(line.debugDescription)" }
    }

    /// Parses one message (without its line ending).
    public static func parse(_ line: [UInt8]) throws(ParseError) -> Message {
        let text = String(decoding: line, as: UTF8.self)
        guard let kind = line.first, [UInt8(ascii: "@"), UInt8(ascii: "#"), UInt8(ascii: "!")].contains(kind) else {
            throw ParseError(line: text, reason: "not a Zaber message (must start with @, # or !)")
        }
        var body = Array(line.dropFirst())
        // Optional checksum: ":CC" at the very end.
        if body.count >= 3, body[body.count - 3] == UInt8(ascii: ":"), let cc = UInt8(String(decoding: body.suffix(2), as: UTF8.self), radix: 16) {
            let covered = body.dropLast(3)
            guard checksum(covered) == cc else {
                throw ParseError(line: text, reason: "checksum mismatch (expected \(hex(checksum(covered))))")
            }
            body = Array(covered)
        }
        let tokens = String(decoding: body, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard tokens.count >= 2, let device = Int(tokens[0]), let axis = Int(tokens[1]) else {
            throw ParseError(line: text, reason: "no device and axis numbers")
        }
        var rest = tokens.dropFirst(2)
        switch kind {
        case UInt8(ascii: "@"):
            var id: Int?
            if let first = rest.first, first != "OK" && first != "RJ" {
                guard let n = Int(first) else { throw ParseError(line: text, reason: "bad message id \(first)") }
                id = n
                rest = rest.dropFirst()
            }
            guard rest.count >= 3, ["OK", "RJ"].contains(rest[rest.startIndex]), ["IDLE", "BUSY"].contains(rest[rest.startIndex + 1]) else {
                throw ParseError(line: text, reason: "reply without OK/RJ, IDLE/BUSY and warning flag")
            }
            let flags = Array(rest.prefix(3))
            var data = rest.dropFirst(3).joined(separator: " ")
            let continues = data.hasSuffix("\\")
            if continues { data.removeLast() }
            return .reply(Reply(device: device, axis: axis, id: id, accepted: flags[0] == "OK", busy: flags[1] == "BUSY", warning: flags[2], data: data, continues: continues))
        case UInt8(ascii: "#"):
            var id: Int?
            if let first = rest.first, first.count == 2, let n = Int(first) {
                id = n
                rest = rest.dropFirst()
            }
            return .info(Info(device: device, axis: axis, id: id, text: rest.joined(separator: " ")))
        default:
            guard rest.count >= 2, ["IDLE", "BUSY"].contains(rest[rest.startIndex]) else {
                throw ParseError(line: text, reason: "alert without IDLE/BUSY and warning flag")
            }
            return .alert(Alert(device: device, axis: axis, busy: rest[rest.startIndex] == "BUSY", warning: rest[rest.startIndex + 1], data: rest.dropFirst(2).joined(separator: " ")))
        }
    }
}

/// Splits a byte stream into lines at `\n` (dropping `\r`), whatever the read boundaries.
public struct ZaberLineAssembler: Sendable {
    private var buffer: [UInt8] = []
    public static let maxLine = 1024
    /// Bytes dropped because a line grew past `maxLine` without a newline (line noise).
    public private(set) var overflowBytes = 0

    public init() { buffer.reserveCapacity(Self.maxLine) }

    /// Feeds bytes, calling `line` for each complete line.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ line: ([UInt8]) -> Void) {
        for b in bytes {
            switch b {
            case UInt8(ascii: "\n"):
                if !buffer.isEmpty { line(buffer) }
                buffer.removeAll(keepingCapacity: true)
            case UInt8(ascii: "\r"):
                break
            default:
                if buffer.count < Self.maxLine {
                    buffer.append(b)
                } else {
                    overflowBytes += 1
                }
            }
        }
    }

    public mutating func reset() { buffer.removeAll(keepingCapacity: true) }
}
