import OperandoCore

/// The Nanonis TCP programming interface, client side (shared/protocols/nanonis-tcp.md; the
/// facts come from TCPProtocol_SPM.pdf, "TCP Protocol" and "Functions", and from what the
/// official `nanonis-spm` client sends and expects).
///
/// - Request: a 40-byte header — the command name NUL-padded to 32 bytes, the body size (int),
///   the send-response-back flag (unsigned int16) and 2 unused bytes — then the body.
/// - Response: a 40-byte header — the name (32), the body size (int), 4 unused bytes — then the
///   return values, then the error: status (unsigned int32), description size (int) and the
///   description. A non-zero status or a non-empty description is the controller refusing the
///   command (the official client treats any non-empty description as an error).
/// - Everything is big-endian. Strings in a body are prefixed with their byte count (int). 1D
///   arrays carry their element count as a separate argument before them (`int32Array(count:)`);
///   a 1D string array is preceded by its size in bytes (every element's 4-byte prefix included)
///   and its element count; a 2D float32 array by its rows and columns.
public enum NanonisProtocol {
    public static let headerSize = 40
    /// Bytes of the command name field; names are at most this long.
    public static let nameSize = 32
    /// The largest response body accepted: a 4096 × 4096 float32 frame (64 MiB) with room to
    /// spare. A header announcing more is treated as a corrupt stream, not as an allocation.
    public static let maxBodySize = 128 << 20
    /// Bytes of the error part every response body ends with when it has an empty description.
    public static let errorTrailerSize = 8

    /// A request: header and body, ready to write in one piece.
    ///
    /// Throws when the name is empty, longer than 32 bytes or not printable ASCII.
    public static func request(_ command: String, body: [UInt8] = [], sendResponse: Bool = true) throws(NanonisWireError) -> [UInt8] {
        let name = Array(command.utf8)
        guard !name.isEmpty, name.count <= nameSize, name.allSatisfy(isNameByte) else {
            throw NanonisWireError("command name \(command.debugDescription) must be 1 to 32 printable ASCII characters")
        }
        guard body.count <= Int(Int32.max) else { throw NanonisWireError("a \(body.count)-byte body does not fit the header's int") }
        var out = [UInt8]()
        out.reserveCapacity(headerSize + body.count)
        out += name
        out += repeatElement(0, count: nameSize - name.count)
        appendBigEndian(UInt32(body.count), to: &out)
        appendBigEndian(UInt16(sendResponse ? 1 : 0), to: &out)
        out += [0, 0]
        out += body
        return out
    }

    /// A response header: the command it answers and the size of the body that follows.
    public struct ResponseHeader: Sendable, Equatable {
        public var command: String
        public var bodySize: Int

        public init(command: String, bodySize: Int) {
            self.command = command
            self.bodySize = bodySize
        }
    }

    /// Decodes a 40-byte response header. Throws when the name is not NUL-padded printable ASCII
    /// or the body size is negative or absurd (over `maxBodySize`): either means the stream is
    /// out of step, and nothing after it can be trusted.
    public static func parseResponseHeader(_ bytes: UnsafeRawBufferPointer, maxBodySize: Int = maxBodySize) throws(NanonisWireError) -> ResponseHeader {
        guard bytes.count >= headerSize else { throw NanonisWireError("a response header is 40 bytes; got \(bytes.count)") }
        var length = 0
        while length < nameSize && bytes[length] != 0 { length += 1 }
        let nameBytes = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
        let padding = UnsafeRawBufferPointer(rebasing: bytes[length..<nameSize])
        guard length > 0, nameBytes.allSatisfy(isNameByte), padding.allSatisfy({ $0 == 0 }) else {
            throw NanonisWireError("malformed response header: the name field \(hex(UnsafeRawBufferPointer(rebasing: bytes[0..<nameSize]))) is not a NUL-padded command name")
        }
        let size = Int(Int32(bitPattern: loadBigEndian(UInt32.self, bytes, at: nameSize)))
        guard size >= 0, size <= maxBodySize else {
            throw NanonisWireError("malformed response header for \(String(decoding: nameBytes, as: UTF8.self)): body size \(size) is outside 0…\(maxBodySize) bytes")
        }
        return ResponseHeader(command: String(decoding: nameBytes, as: UTF8.self), bodySize: size)
    }

    /// The error part at the end of a response body.
    public struct ErrorInfo: Sendable, Equatable {
        public var status: UInt32
        public var description: String
        public var isError: Bool { status != 0 || !description.isEmpty }
    }

    /// Decodes the reply body of `command`: `values` reads the return values, then the error
    /// part must fill the rest exactly. A reply that reports an error becomes
    /// `InstrumentError(.rejected)` naming the command and quoting the controller's description,
    /// whether the return values precede the error or the body holds the error alone. A body
    /// that fits neither is `InstrumentError(.protocolViolation)`.
    public static func decodeReply<T>(
        _ body: ArraySlice<UInt8>, command: String, device: String, _ values: (inout NanonisBodyReader) throws(NanonisWireError) -> T
    ) throws -> T {
        var reader = NanonisBodyReader(body)
        let problem: NanonisWireError
        do {
            let result = try values(&reader)
            let error = try reader.errorTrailer()
            if error.isError { throw rejection(error, command: command, device: device) }
            return result
        } catch let e as NanonisWireError {
            problem = e
        }
        // The values did not parse or did not leave exactly an error part: an error-only reply,
        // or an error after return values laid out otherwise than expected? Look for an error
        // part that ends the body exactly and reports an error.
        if let error = trailingError(body) { throw rejection(error, command: command, device: device) }
        throw InstrumentError(.protocolViolation, device: device, "the reply to \(command) does not decode: \(problem.message) (\(body.count)-byte body: \(hex(body.prefix(48)))\(body.count > 48 ? "…" : ""))")
    }

    /// The error part at the end of `body`, found without decoding the values before it: the
    /// first offset where a non-zero status and a description size that ends the body exactly
    /// meet (or the whole body as a bare error part).
    static func trailingError(_ body: ArraySlice<UInt8>) -> ErrorInfo? {
        var bare = NanonisBodyReader(body)
        if let error = try? bare.errorTrailer(), error.isError { return error }
        guard body.count >= errorTrailerSize else { return nil }
        return body.withUnsafeBytes { raw -> ErrorInfo? in
            for offset in 0...(raw.count - errorTrailerSize) {
                let status = loadBigEndian(UInt32.self, raw, at: offset)
                let size = Int(Int32(bitPattern: loadBigEndian(UInt32.self, raw, at: offset + 4)))
                guard status != 0, size > 0, size == raw.count - offset - errorTrailerSize else { continue }
                return ErrorInfo(status: status, description: String(decoding: raw[(offset + errorTrailerSize)...], as: UTF8.self))
            }
            return nil
        }
    }

    static func rejection(_ error: ErrorInfo, command: String, device: String) -> InstrumentError {
        let text = error.description.isEmpty ? "no description" : error.description.debugDescription
        return InstrumentError(.rejected, device: device, "the controller refused \(command): \(text) (error status \(error.status))")
    }

    static func isNameByte(_ b: UInt8) -> Bool { b > 0x20 && b < 0x7F }

    static func appendBigEndian<T: FixedWidthInteger>(_ value: T, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { out += $0 }
    }

    static func loadBigEndian<T: FixedWidthInteger>(_ type: T.Type, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> T {
        T(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    static func hex<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef")
        var s = ""
        for b in bytes { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
        return s
    }
}

/// What is wrong with bytes on the wire: a message for an `InstrumentError`.
public struct NanonisWireError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Builds a request body in the protocol's big-endian types.
public struct NanonisBodyWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func int32(_ v: Int32) { NanonisProtocol.appendBigEndian(v, to: &bytes) }
    public mutating func uint16(_ v: UInt16) { NanonisProtocol.appendBigEndian(v, to: &bytes) }
    public mutating func uint32(_ v: UInt32) { NanonisProtocol.appendBigEndian(v, to: &bytes) }
    public mutating func float32(_ v: Float) { NanonisProtocol.appendBigEndian(v.bitPattern, to: &bytes) }
    public mutating func float64(_ v: Double) { NanonisProtocol.appendBigEndian(v.bitPattern, to: &bytes) }

    /// A string in a body: its byte count (int), then its UTF-8 bytes.
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        int32(Int32(utf8.count))
        bytes += utf8
    }

    /// A 1D int array; `count` prepends its element count (int), as most functions want.
    public mutating func int32Array(_ values: [Int32], count: Bool = true) {
        if count { int32(Int32(values.count)) }
        for v in values { int32(v) }
    }

    public mutating func uint32Array(_ values: [UInt32], count: Bool = true) {
        if count { int32(Int32(values.count)) }
        for v in values { uint32(v) }
    }

    public mutating func float32Array(_ values: [Float], count: Bool = true) {
        if count { int32(Int32(values.count)) }
        for v in values { float32(v) }
    }

    public mutating func float64Array(_ values: [Double], count: Bool = true) {
        if count { int32(Int32(values.count)) }
        for v in values { float64(v) }
    }

    /// A 1D string array: its size in bytes (the elements with their 4-byte prefixes), its
    /// element count, then each element as a string.
    public mutating func stringArray(_ values: [String]) {
        int32(Int32(values.reduce(0) { $0 + 4 + $1.utf8.count }))
        int32(Int32(values.count))
        for v in values { string(v) }
    }

    /// A 2D float32 array: rows (int), columns (int), then the values row by row.
    public mutating func float32Matrix(rows: Int, columns: Int, _ values: [Float]) {
        precondition(values.count == rows * columns, "a \(rows)×\(columns) matrix has \(rows * columns) values")
        int32(Int32(rows))
        int32(Int32(columns))
        for v in values { float32(v) }
    }
}

/// Reads a response body in the protocol's big-endian types. Every read checks the bytes are
/// there and throws `NanonisWireError` when they are not, so a short or corrupt body is an
/// error, never a crash.
public struct NanonisBodyReader: Sendable {
    public let bytes: ArraySlice<UInt8>
    public private(set) var offset: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        offset = bytes.startIndex
    }

    public init(_ bytes: [UInt8]) { self.init(bytes[...]) }

    public var remaining: Int { bytes.endIndex - offset }
    public var atEnd: Bool { remaining == 0 }

    private mutating func take<T: FixedWidthInteger>(_ type: T.Type, _ what: String) throws(NanonisWireError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else {
            throw NanonisWireError("\(what) needs \(size) bytes at offset \(offset - bytes.startIndex) but \(remaining) are left")
        }
        let v = bytes.withUnsafeBytes { T(bigEndian: $0.loadUnaligned(fromByteOffset: offset - bytes.startIndex, as: T.self)) }
        offset += size
        return v
    }

    public mutating func int32(_ what: String = "an int") throws(NanonisWireError) -> Int32 { try take(Int32.self, what) }
    public mutating func uint16(_ what: String = "an unsigned int16") throws(NanonisWireError) -> UInt16 { try take(UInt16.self, what) }
    public mutating func uint32(_ what: String = "an unsigned int32") throws(NanonisWireError) -> UInt32 { try take(UInt32.self, what) }
    public mutating func float32(_ what: String = "a float32") throws(NanonisWireError) -> Float { Float(bitPattern: try take(UInt32.self, what)) }
    public mutating func float64(_ what: String = "a float64") throws(NanonisWireError) -> Double { Double(bitPattern: try take(UInt64.self, what)) }

    /// A count or size argument: an int that must be in 0…`limit`.
    public mutating func count(_ what: String, limit: Int) throws(NanonisWireError) -> Int {
        let n = Int(try int32(what))
        guard n >= 0, n <= limit else { throw NanonisWireError("\(what) is \(n); expected 0…\(limit)") }
        return n
    }

    /// `byteCount` bytes as UTF-8 text.
    public mutating func string(byteCount: Int, _ what: String = "a string") throws(NanonisWireError) -> String {
        guard byteCount >= 0, byteCount <= remaining else {
            throw NanonisWireError("\(what) of \(byteCount) bytes at offset \(offset - bytes.startIndex) but \(remaining) are left")
        }
        let s = String(decoding: bytes[offset..<offset + byteCount], as: UTF8.self)
        offset += byteCount
        return s
    }

    /// A string with its int byte count in front.
    public mutating func string(_ what: String = "a string") throws(NanonisWireError) -> String {
        let n = Int(try int32("the size of \(what)"))
        return try string(byteCount: n, what)
    }

    /// `count` ints (the count was a separate argument).
    public mutating func int32Array(count: Int, _ what: String = "an int array") throws(NanonisWireError) -> [Int32] {
        try array(count, 4, what) { (r) throws(NanonisWireError) in try r.int32(what) }
    }

    public mutating func uint32Array(count: Int, _ what: String = "an unsigned int32 array") throws(NanonisWireError) -> [UInt32] {
        try array(count, 4, what) { (r) throws(NanonisWireError) in try r.uint32(what) }
    }

    /// `count` elements of `size` bytes, each read by `element`, once the body is known to hold them.
    private mutating func array<T>(_ count: Int, _ size: Int, _ what: String, _ element: (inout Self) throws(NanonisWireError) -> T) throws(NanonisWireError) -> [T] {
        try checkRoom(count, size, what)
        var out = [T]()
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(try element(&self)) }
        return out
    }

    public mutating func float32Array(count: Int, _ what: String = "a float32 array") throws(NanonisWireError) -> [Float] {
        try checkRoom(count, 4, what)
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { readFloat32s(into: $0) }
        return out
    }

    public mutating func float64Array(count: Int, _ what: String = "a float64 array") throws(NanonisWireError) -> [Double] {
        try array(count, 8, what) { (r) throws(NanonisWireError) in try r.float64(what) }
    }

    /// A 1D string array with its byte size and element count in front; the byte size must
    /// equal what the elements (with their prefixes) take.
    public mutating func stringArray(_ what: String = "a string array", limit: Int = 1 << 20) throws(NanonisWireError) -> [String] {
        let size = try count("the byte size of \(what)", limit: remaining)
        let n = try count("the element count of \(what)", limit: min(limit, size / 4))
        let start = offset
        var out = [String]()
        out.reserveCapacity(n)
        for i in 0..<n { out.append(try string("element \(i) of \(what)")) }
        guard offset - start == size else {
            throw NanonisWireError("\(what) announces \(size) bytes but its \(n) elements take \(offset - start)")
        }
        return out
    }

    /// A 2D float32 array: its rows and columns (ints), then the values row by row, copied into
    /// `storage` (which must hold rows × columns). Returns the shape.
    public mutating func float32Matrix(into storage: UnsafeMutableBufferPointer<Float>, _ what: String = "a 2D float32 array") throws(NanonisWireError) -> (rows: Int, columns: Int) {
        let rows = try count("the rows of \(what)", limit: remaining / 4)
        let columns = try count("the columns of \(what)", limit: remaining / 4)
        let (n, overflow) = rows.multipliedReportingOverflow(by: columns)
        guard !overflow else { throw NanonisWireError("\(what) of \(rows) × \(columns) is too large") }
        try checkRoom(n, 4, what)
        guard n <= storage.count else {
            throw NanonisWireError("\(what) of \(rows) × \(columns) does not fit the \(storage.count) values expected")
        }
        readFloat32s(into: UnsafeMutableBufferPointer(rebasing: storage[0..<n]))
        return (rows, columns)
    }

    /// The error part: status, description size, description, which must end the body.
    public mutating func errorTrailer() throws(NanonisWireError) -> NanonisProtocol.ErrorInfo {
        let status = try uint32("the error status")
        let size = Int(try int32("the error description size"))
        guard size == remaining else {
            throw NanonisWireError("the error description size is \(size) but \(remaining) bytes are left after the return values")
        }
        return NanonisProtocol.ErrorInfo(status: status, description: try string(byteCount: size, "the error description"))
    }

    private func checkRoom(_ count: Int, _ size: Int, _ what: String) throws(NanonisWireError) {
        guard count >= 0, count <= remaining / size else {
            throw NanonisWireError("\(what) of \(count) elements needs \(count * size) bytes but \(remaining) are left")
        }
    }

    /// Copies `out.count` big-endian float32 values (room already checked).
    private mutating func readFloat32s(into out: UnsafeMutableBufferPointer<Float>) {
        let base = offset - bytes.startIndex
        bytes.withUnsafeBytes { raw in
            for i in 0..<out.count {
                out[i] = Float(bitPattern: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: base + 4 * i, as: UInt32.self)))
            }
        }
        offset += 4 * out.count
    }
}

/// Cuts a byte stream from the controller into responses, whatever the read boundaries: feed it
/// what each read returns, then take the complete responses out.
///
/// Bytes are kept in one buffer that grows to the largest response seen and is reused.
public struct NanonisResponseAssembler: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0
    public let maxBodySize: Int

    public init(maxBodySize: Int = NanonisProtocol.maxBodySize) {
        self.maxBodySize = maxBodySize
        buffer.reserveCapacity(64 * 1024)
    }

    /// Bytes received and not yet returned as a response.
    public var buffered: Int { buffer.count - start }

    public mutating func reset() {
        buffer.removeAll(keepingCapacity: true)
        start = 0
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if start > 0 && (start == buffer.count || start > buffer.count / 2) {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete response, if one has arrived; its body is valid until the next call.
    /// Throws on a malformed header (then the stream cannot be resynchronised: reconnect).
    public mutating func next() throws(NanonisWireError) -> (header: NanonisProtocol.ResponseHeader, body: ArraySlice<UInt8>)? {
        guard buffered >= NanonisProtocol.headerSize else { return nil }
        let parsed = buffer.withUnsafeBytes { raw in
            Result { () throws(NanonisWireError) in
                try NanonisProtocol.parseResponseHeader(UnsafeRawBufferPointer(rebasing: raw[start..<start + NanonisProtocol.headerSize]), maxBodySize: maxBodySize)
            }
        }
        let header = try parsed.get()
        let end = start + NanonisProtocol.headerSize + header.bodySize
        guard buffer.count >= end else { return nil }
        let body = buffer[(start + NanonisProtocol.headerSize)..<end]
        start = end
        return (header, body)
    }
}
