// Framing of the Zaber ASCII protocol, seen from the device: assembling command packets from
// the byte stream, parsing their header, checksum and continuation markers, and encoding
// replies, info messages and alerts (split into several packets when they are long).
//
// Written from the public protocol description (shared/protocols/zaber-ascii.md, the Zaber
// ASCII protocol manual, zproto's packet grammar), not from ZaberDriver.

/// The ASCII protocol's checksum (a longitudinal redundancy check): the two's complement of the
/// byte sum of everything between the leading `/` (or `@`, `#`, `!`) and the `:`, modulo 256.
public enum ZaberChecksum {
    /// The checksum of `bytes`. zproto's vector: `01 tools echo` → 143 (0x8F).
    public static func of<S: Sequence>(_ bytes: S) -> UInt8 where S.Element == UInt8 {
        var sum: UInt8 = 0
        for byte in bytes { sum &+= byte }
        return 0 &- sum
    }

    /// Two upper-case hex digits, as they follow the `:` on the wire.
    public static func hex(_ value: UInt8) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        return String(decoding: [digits[Int(value >> 4)], digits[Int(value & 0x0F)]], as: UTF8.self)
    }
}

/// Cuts the host's byte stream into command packets the way a device's receiver does:
/// a packet starts at `/` and ends at `\r` or `\n` (any combination); bytes outside a packet are
/// ignored; backspace erases the last byte; DEL or any other unsupported (non-printable)
/// character discards the packet being received; a packet longer than `maxLength` is dropped.
struct PacketAssembler {
    private var buffer: [UInt8] = []
    private var inPacket = false
    private var overflowed = false
    let maxLength: Int

    init(maxLength: Int) { self.maxLength = maxLength }

    /// Feeds one byte; returns the packet's content (between `/` and the terminator) when it
    /// completes one.
    mutating func feed(_ byte: UInt8) -> [UInt8]? {
        switch byte {
        case UInt8(ascii: "/") where !inPacket:
            inPacket = true
            overflowed = false
            buffer.removeAll(keepingCapacity: true)
        case 0x0D, 0x0A:
            guard inPacket else { return nil }
            inPacket = false
            return overflowed ? nil : buffer
        case 0x08:  // backspace
            if inPacket && !buffer.isEmpty { buffer.removeLast() }
        case 0x09, 0x20...0x7E:  // tab separates words like a space
            guard inPacket else { return nil }
            if buffer.count >= maxLength { overflowed = true } else { buffer.append(byte) }
        default:  // DEL and every other control or non-ASCII byte
            inPacket = false
        }
        return nil
    }
}

/// One command packet, parsed: `[device] [axis] [id] words…[\][:CC]`.
struct CommandPacket {
    enum Checksum: Equatable {
        case absent
        case valid
        case invalid
    }

    /// 0 addresses every device; -1 when the address token is not a valid address (no device answers).
    var device = 0
    var axis = 0
    /// The message id as it was sent (echoed verbatim), when there was one.
    var messageID: String?
    /// The id token was there but outside 0…99.
    var badMessageID = false
    var words: [String] = []
    /// The packet ended with `\`: more packets of the same command follow (`cont 1`, `cont 2`, …).
    var continues = false
    var checksum = Checksum.absent

    /// A `cont N` packet continuing a split command; nil when this packet starts a command.
    var continuationIndex: Int? {
        guard words.first == "cont" else { return nil }
        guard words.count >= 2, let n = Int(words[1]), n > 0 else { return 0 }
        return n
    }

    /// Parses a packet's content (the bytes between `/` and the terminator).
    static func parse(_ content: [UInt8]) -> CommandPacket {
        var packet = CommandPacket()
        var body = content[...]
        let n = content.count
        if n >= 3 && content[n - 3] == UInt8(ascii: ":") {
            let hashed = content[0..<(n - 3)]
            body = hashed
            if let sent = UInt8(String(decoding: content[(n - 2)...], as: UTF8.self), radix: 16) {
                packet.checksum = ZaberChecksum.of(hashed) == sent ? .valid : .invalid
            } else {
                packet.checksum = .invalid
            }
        }
        if body.last == UInt8(ascii: "\\") {
            packet.continues = true
            body = body.dropLast()
        }
        let tokens = body.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 }).map { String(decoding: $0, as: UTF8.self) }
        var index = 0
        var numbers: [String] = []
        while index < tokens.count && numbers.count < 3 && !tokens[index].isEmpty && tokens[index].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            numbers.append(tokens[index])
            index += 1
        }
        func value(_ token: String) -> Int { token.count > 6 ? Int.max : Int(token)! }
        if numbers.count >= 1 {
            let device = value(numbers[0])
            packet.device = device <= 99 ? device : -1
        }
        if numbers.count >= 2 { packet.axis = min(value(numbers[1]), 1000) }
        if numbers.count >= 3 {
            if value(numbers[2]) <= 99 { packet.messageID = numbers[2] } else { packet.badMessageID = true }
        }
        packet.words = Array(tokens[index...])
        return packet
    }
}

/// A message from a device: a reply (`@`), an info message (`#`) or an alert (`!`).
struct DeviceMessage {
    enum Kind: Character {
        case reply = "@"
        case info = "#"
        case alert = "!"
    }

    var kind: Kind
    var device: Int
    var axis: Int
    var messageID: String?
    /// `OK` or `RJ`; replies only.
    var flag = "OK"
    /// `IDLE` or `BUSY`; replies and alerts.
    var status = "IDLE"
    /// The highest-priority warning flag, `--` when none; replies and alerts.
    var warning = "--"
    var data: String

    /// Encodes the message as one or more packets, each ending `\r\n`. A message whose packet
    /// would exceed `maxPacketSize` bytes is split between words: every packet but the last ends
    /// with `\`, and the rest follows in info packets `#DD A [id] cont …` carrying the same id.
    /// `checksum` appends `:CC` to every packet (comm.checksum = 1).
    func encode(maxPacketSize: Int, checksum: Bool) -> [String] {
        let address = device < 10 ? "0\(device)" : "\(device)"
        var header = "\(address) \(axis)"
        if let messageID { header += " \(messageID)" }
        var first = header
        switch kind {
        case .reply: first += " \(flag) \(status) \(warning)"
        case .alert: first += " \(status) \(warning)"
        case .info: break
        }
        // Room for the content of one packet: less the leading `@`/`#`/`!`, a `\`, an optional
        // checksum and the terminator.
        let budget = max(maxPacketSize - 1 - 1 - (checksum ? 3 : 0) - 2, 20)
        let words = data.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        var packets: [String] = []
        var current = first
        var currentHasWords = kind == .alert  // alerts may legitimately have no data
        var kindOfCurrent = kind
        for word in words {
            if currentHasWords && current.utf8.count + 1 + word.utf8.count > budget {
                packets.append(Self.finish(kindOfCurrent, current + "\\", checksum: checksum))
                current = header + " cont"
                kindOfCurrent = .info
            }
            current += " " + word
            currentHasWords = true
        }
        packets.append(Self.finish(kindOfCurrent, current, checksum: checksum))
        return packets
    }

    private static func finish(_ kind: Kind, _ content: String, checksum: Bool) -> String {
        var line = String(kind.rawValue) + content
        if checksum { line += ":" + ZaberChecksum.hex(ZaberChecksum.of(content.utf8)) }
        return line + "\r\n"
    }
}
