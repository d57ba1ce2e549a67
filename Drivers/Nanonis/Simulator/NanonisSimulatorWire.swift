import OperandoCore

// The controller's end of the Nanonis TCP protocol, written from TCPProtocol_SPM.pdf ("TCP
// Protocol": request and response messages, data types) and what the official nanonis-spm
// client sends, without the driver's codec, so that each checks the other.

/// One request as the controller's TCP server sees it.
struct SimRequest {
    /// The 32-byte name field up to its first NUL, as text.
    var name: String
    /// The name field's 32 bytes exactly, echoed in the response header.
    var nameField: [UInt8]
    var body: [UInt8]
    /// The header's "send response back" flag.
    var wantsResponse: Bool
}

/// A request stream that cannot be cut into messages any more (an absurd body size): the server
/// drops the connection, since no later byte can be trusted.
struct SimFramingFault: Error {
    var reason: String
}

/// Cuts the client's byte stream into requests, whatever the read boundaries.
struct SimRequestFramer {
    /// Largest request body the server takes (a request carries arguments, never frames).
    static let maxBody = 16 << 20
    private var bytes: [UInt8] = []
    private var head = 0

    init() { bytes.reserveCapacity(8192) }

    mutating func push(_ chunk: ArraySlice<UInt8>) {
        if head > 4096 && head * 2 > bytes.count {
            bytes.removeSubrange(0..<head)
            head = 0
        }
        bytes.append(contentsOf: chunk)
    }

    var pendingBytes: Int { bytes.count - head }

    mutating func next() throws(SimFramingFault) -> SimRequest? {
        guard bytes.count - head >= 40 else { return nil }
        let h = head
        // Body size: a signed 32-bit big-endian integer at bytes 32…35.
        let size = Int(Int32(bitPattern: UInt32(bytes[h + 32]) << 24 | UInt32(bytes[h + 33]) << 16 | UInt32(bytes[h + 34]) << 8 | UInt32(bytes[h + 35])))
        guard size >= 0 && size <= Self.maxBody else {
            throw SimFramingFault(reason: "request body size \(size) is outside 0…\(Self.maxBody)")
        }
        guard bytes.count - h >= 40 + size else { return nil }
        let field = Array(bytes[h..<h + 32])
        let text = field.prefix { $0 != 0 }
        let flag = UInt16(bytes[h + 36]) << 8 | UInt16(bytes[h + 37])
        let request = SimRequest(
            name: String(decoding: text, as: UTF8.self), nameField: field, body: Array(bytes[(h + 40)..<(h + 40 + size)]), wantsResponse: flag != 0)
        head = h + 40 + size
        if head == bytes.count {
            bytes.removeAll(keepingCapacity: true)
            head = 0
        }
        return request
    }
}

/// An argument list that does not match what the function takes.
struct SimArgumentFault: Error {
    var description: String
}

/// Reads a request body argument by argument (big-endian), never past its end.
struct SimArguments {
    private let body: [UInt8]
    private var at = 0

    init(_ body: [UInt8]) { self.body = body }

    var left: Int { body.count - at }

    private mutating func bytes(_ n: Int, _ what: String) throws(SimArgumentFault) -> ArraySlice<UInt8> {
        guard n >= 0 && n <= left else { throw SimArgumentFault(description: "\(what): the body ends before it") }
        defer { at += n }
        return body[at..<at + n]
    }

    private mutating func word(_ what: String) throws(SimArgumentFault) -> UInt32 {
        try bytes(4, what).reduce(0) { $0 << 8 | UInt32($1) }
    }

    mutating func int(_ what: String) throws(SimArgumentFault) -> Int32 { Int32(bitPattern: try word(what)) }
    mutating func u32(_ what: String) throws(SimArgumentFault) -> UInt32 { try word(what) }
    mutating func u16(_ what: String) throws(SimArgumentFault) -> UInt16 { try bytes(2, what).reduce(0) { $0 << 8 | UInt16($1) } }
    mutating func f32(_ what: String) throws(SimArgumentFault) -> Float { Float(bitPattern: try word(what)) }
    mutating func f64(_ what: String) throws(SimArgumentFault) -> Double {
        Double(bitPattern: try bytes(8, what).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    /// A string with its size (int) in front.
    mutating func text(_ what: String) throws(SimArgumentFault) -> String {
        let n = Int(try int("size of \(what)"))
        return String(decoding: try bytes(n, what), as: UTF8.self)
    }

    /// `n` ints (their count was a separate argument).
    mutating func ints(_ n: Int, _ what: String) throws(SimArgumentFault) -> [Int32] {
        guard n >= 0 && n * 4 <= left else { throw SimArgumentFault(description: "\(what): \(n) elements do not fit the body") }
        var out: [Int32] = []
        for _ in 0..<n { out.append(try int(what)) }
        return out
    }

    /// A 1D string array: size in bytes, element count, elements. The size is not trusted: the
    /// official client sends 4 × count there.
    mutating func texts(_ what: String) throws(SimArgumentFault) -> [String] {
        _ = try int("size of \(what)")
        let n = Int(try int("count of \(what)"))
        guard n >= 0 && n * 4 <= left else { throw SimArgumentFault(description: "\(what): \(n) elements do not fit the body") }
        var out: [String] = []
        for i in 0..<n { out.append(try text("element \(i) of \(what)")) }
        return out
    }

    /// Throws unless every byte was used: a longer body is a different argument list.
    func end(_ command: String) throws(SimArgumentFault) {
        guard left == 0 else { throw SimArgumentFault(description: "\(left) bytes more than \(command) takes") }
    }
}

/// A response body under construction: return values (big-endian), then the error part.
struct SimReply {
    private(set) var values: [UInt8] = []

    mutating func u16(_ v: UInt16) { values += [UInt8(v >> 8), UInt8(v & 0xFF)] }
    mutating func u32(_ v: UInt32) { values += [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
    mutating func int(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    mutating func f64(_ v: Double) {
        let b = v.bitPattern
        u32(UInt32(b >> 32))
        u32(UInt32(b & 0xFFFF_FFFF))
    }

    /// A string with its size (int) in front.
    mutating func text(_ s: String) {
        int(Int32(s.utf8.count))
        values += s.utf8
    }

    /// A 1D string array: its size in bytes (the elements with their size prefixes), its count,
    /// the elements.
    mutating func texts(_ list: [String]) {
        int(Int32(list.reduce(0) { $0 + 4 + $1.utf8.count }))
        int(Int32(list.count))
        for s in list { text(s) }
    }

    /// Appends float32 values; `values` may be large (a frame), so reserve first.
    mutating func f32s<C: Collection>(_ list: C) where C.Element == Float {
        values.reserveCapacity(values.count + 4 * list.count)
        for v in list { f32(v) }
    }

    /// The whole response: a 40-byte header (the request's name field, the body size, 4 unused
    /// bytes), the values, then error status, description size and description.
    func message(nameField: [UInt8], errorStatus: UInt32 = 0, errorText: String = "") -> [UInt8] {
        var tail = SimReply()
        tail.u32(errorStatus)
        tail.text(errorText)
        var header = SimReply()
        header.values = nameField
        header.int(Int32(values.count + tail.values.count))
        header.u32(0)
        return header.values + values + tail.values
    }
}
