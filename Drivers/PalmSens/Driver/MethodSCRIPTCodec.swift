import Foundation

/// A MethodSCRIPT variable type (the two letters before a value in a data package).
public struct MSVariableType: Sendable, Equatable {
    public var code: String
    public var name: String
    public var unit: String
}

/// One decoded variable of a data package.
public struct MSVariable: Sendable, Equatable {
    /// The type's two ASCII letters packed as `first << 8 | second` (`MethodSCRIPTCodec.code("ba")`).
    public var type: UInt16 = 0
    /// SI value (V, A, s, Hz, Ω, …); NaN when the device sent `nan`.
    public var value: Double = 0
    /// The raw offset-removed integer (value − 2^27), 0 for NaN.
    public var raw: Int32 = 0
    /// The SI prefix byte (`u`, ` `, `i` …).
    public var prefix: UInt8 = 0x20
    /// Status nibble (1 timing error, 2 overload, 4 underload, 8 overload warning); 0 if absent.
    public var status: UInt8 = 0
    /// Current (or potential) range index from `2XX` metadata; -1 if absent.
    public var rangeIndex: Int16 = -1
    public init() {}
}

/// A decoded package: up to `capacity` variables in preallocated storage (no allocation per line).
public struct MSPackage: Sendable {
    public static let capacity = 16
    public private(set) var variables = [MSVariable](repeating: MSVariable(), count: MSPackage.capacity)
    public private(set) var count = 0
    public init() {}

    mutating func reset() { count = 0 }
    mutating func append(_ v: MSVariable) -> Bool {
        guard count < Self.capacity else { return false }
        variables[count] = v
        count += 1
        return true
    }

    public subscript(i: Int) -> MSVariable { variables[i] }

    /// The decoded variables, read in place (the consumer's hot path: no copies, no retains).
    @inline(__always) public func withVariables<R>(_ body: (UnsafeBufferPointer<MSVariable>) -> R) -> R {
        variables.withUnsafeBufferPointer { body(UnsafeBufferPointer(rebasing: $0[0..<count])) }
    }

    /// The first variable of `type` (e.g. `MethodSCRIPTCodec.code("ba")`).
    public func first(_ type: UInt16) -> MSVariable? {
        for i in 0..<count where variables[i].type == type { return variables[i] }
        return nil
    }
}

/// Why a line could not be decoded.
public enum MSDecodeFailure: String, Sendable, Equatable {
    case emptyPackage = "empty data package"
    case variableTooShort = "variable shorter than type + 7 hex digits + prefix"
    case badTypeCode = "variable type is not two lowercase letters"
    case badHexDigit = "value is not 7 hex digits"
    case badPrefix = "unknown SI prefix"
    case badMetadata = "malformed metadata"
    case tooManyVariables = "more variables than a package holds"
    case badLoopMarker = "loop marker without 4 hex digits"
    case unknownLine = "not a MethodSCRIPT output line"
    case lineTooLong = "line longer than the framer's buffer"
}

/// A device error `!XXXX`, with the script position when the device gave one.
public struct MSDeviceError: Sendable, Equatable {
    public var code: UInt16
    public var line: Int?
    public var column: Int?
    public var detail: String?
    public var meaning: String { MethodSCRIPTCodec.errorMeaning(code) }
    public var codeText: String { MethodSCRIPTCodec.hex4(code) }
    public init(code: UInt16, line: Int? = nil, column: Int? = nil, detail: String? = nil) {
        self.code = code
        self.line = line
        self.column = column
        self.detail = detail
    }
}

/// One line of device output.
public enum MSLine: Sendable, Equatable {
    /// `e`: the script was received and runs.
    case ack
    /// `P…`: decoded into the package buffer passed to `decode`.
    case package
    /// `Mxxxx` / `*`.
    case measurementLoopStart(UInt16)
    case measurementLoopEnd
    /// `L` / `+`.
    case loopStart
    case loopEnd
    /// `Cxxxx` / `-` (meas loops with nscans > 1).
    case scanStart(UInt16)
    case scanEnd
    /// `T…`: a `send_string` (without the `T`).
    case text(String)
    /// Empty line: the script finished.
    case scriptFinished
    /// `!XXXX[: details]`, anywhere on a line other than `Z`.
    case error(MSDeviceError)
    /// `Z` (a script was aborted) or `Z!XXXX` (nothing to abort: 0006).
    case abortReply(error: UInt16?)
    /// A reply to a host command (`t…`, `v…`, `i…`): the letter and the text after it.
    case reply(letter: UInt8, text: String)
    case malformed(MSDecodeFailure)
}

/// Decoding of MethodSCRIPT device output (PalmSens EmStat Pico, EmStat4, Nexus).
public enum MethodSCRIPTCodec {
    public static func code(_ s: StaticString) -> UInt16 {
        let p = s.utf8Start
        return UInt16(p[0]) << 8 | UInt16(p[1])
    }

    public static let potentialApplied = code("da"), currentApplied = code("db"), frequency = code("dc")
    public static let potentialWEvsRE = code("ab"), currentWE = code("ba"), time = code("eb")
    public static let zReal = code("cc"), zImag = code("cd"), eisEDC = code("ci")
    public static let generic1 = code("ja"), generic2 = code("jb")

    /// The variable types (from PalmSens' public mscript.py), with units.
    public static let variableTypes: [MSVariableType] = [
        ("aa", "unknown", ""), ("ab", "WE vs RE potential", "V"), ("ac", "CE vs GND potential", "V"),
        ("ad", "SE vs GND potential", "V"), ("ae", "RE vs GND potential", "V"), ("af", "WE vs GND potential", "V"),
        ("ag", "WE vs CE potential", "V"), ("ah", "S2 vs RE potential", "V"), ("ai", "SE vs S2 potential", "V"),
        ("as", "AIN0 potential", "V"), ("at", "AIN1 potential", "V"), ("au", "AIN2 potential", "V"), ("av", "AIN3 potential", "V"),
        ("aw", "AIN4 potential", "V"), ("ax", "AIN5 potential", "V"), ("ay", "AIN6 potential", "V"), ("az", "AIN7 potential", "V"),
        ("ba", "WE current", "A"), ("bb", "WE2 current", "A"),
        ("ca", "phase", "deg"), ("cb", "impedance", "Ohm"), ("cc", "Z real", "Ohm"), ("cd", "Z imaginary", "Ohm"),
        ("ce", "EIS E TDD", "V"), ("cf", "EIS I TDD", "A"), ("cg", "EIS sampling frequency", "Hz"), ("ch", "EIS E AC", "Vrms"),
        ("ci", "EIS E DC", "V"), ("cj", "EIS I AC", "Arms"), ("ck", "EIS I DC", "A"), ("cl", "Z real bipot", "Ohm"),
        ("cm", "Z imaginary bipot", "Ohm"), ("cn", "Z real S2 vs RE", "Ohm"), ("co", "Z imaginary S2 vs RE", "Ohm"),
        ("cp", "Z real SE vs S2", "Ohm"), ("cq", "Z imaginary SE vs S2", "Ohm"), ("cr", "EIS bipot I TDD", "A"),
        ("cs", "EIS S2 vs RE E TDD", "V"), ("ct", "EIS SE vs S2 E TDD", "V"), ("cu", "EIS bipot I AC", "Arms"),
        ("cv", "EIS bipot I DC", "A"), ("cw", "EIS S2 vs RE E AC", "Vrms"), ("cx", "EIS S2 vs RE E DC", "V"),
        ("cy", "EIS SE vs S2 E AC", "Vrms"), ("cz", "EIS SE vs S2 E DC", "V"),
        ("da", "applied potential", "V"), ("db", "applied current", "A"), ("dc", "applied frequency", "Hz"),
        ("dd", "applied AC amplitude", "Vrms"),
        ("ea", "channel", ""), ("eb", "time", "s"), ("ec", "pin mask", ""), ("ed", "temperature", "degC"), ("ee", "count", ""),
        ("ef", "board temperature", "degC"), ("eg", "time vs potential derivative", "s/V"),
        ("ha", "generic current 1", "A"), ("hb", "generic current 2", "A"), ("hc", "generic current 3", "A"), ("hd", "generic current 4", "A"),
        ("ia", "generic potential 1", "V"), ("ib", "generic potential 2", "V"), ("ic", "generic potential 3", "V"), ("id", "generic potential 4", "V"),
        ("ja", "misc generic 1", ""), ("jb", "misc generic 2", ""), ("jc", "misc generic 3", ""), ("jd", "misc generic 4", ""),
    ].map { MSVariableType(code: $0.0, name: $0.1, unit: $0.2) }

    /// The type for a packed code; nil for a code not in the table (still decoded).
    public static func variableType(_ code: UInt16) -> MSVariableType? {
        let s = String(decoding: [UInt8(code >> 8), UInt8(code & 0xFF)], as: UTF8.self)
        return variableTypes.first { $0.code == s }
    }

    /// SI prefix factor; `i` (integer) is 1. nil for an unknown prefix.
    @inline(__always) public static func prefixFactor(_ b: UInt8) -> Double? {
        switch b {
        case UInt8(ascii: "a"): 1e-18
        case UInt8(ascii: "f"): 1e-15
        case UInt8(ascii: "p"): 1e-12
        case UInt8(ascii: "n"): 1e-9
        case UInt8(ascii: "u"): 1e-6
        case UInt8(ascii: "m"): 1e-3
        case UInt8(ascii: " "), UInt8(ascii: "i"): 1
        case UInt8(ascii: "k"): 1e3
        case UInt8(ascii: "M"): 1e6
        case UInt8(ascii: "G"): 1e9
        case UInt8(ascii: "T"): 1e12
        case UInt8(ascii: "P"): 1e15
        case UInt8(ascii: "E"): 1e18
        default: nil
        }
    }

    /// Error codes established from public sources, with their meaning. The full table is in the
    /// MethodSCRIPT manual (not public in machine-readable form); other codes are reported by number.
    public static let errorCodes: [UInt16: String] = [
        0x0006: "command not possible in the current state (the reply to Z when no script is running)",
    ]

    public static func errorMeaning(_ code: UInt16) -> String {
        errorCodes[code] ?? "MethodSCRIPT error 0x\(hex4(code)) (see the error table of the MethodSCRIPT manual)"
    }

    static func hex4(_ v: UInt16) -> String {
        let s = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: 4 - s.count) + s
    }

    /// Device family from the firmware text of `t`.
    public static func deviceFamily(firmware: String) -> String {
        for (prefix, name) in [("espico", "EmStat Pico"), ("es4_hr", "EmStat4 HR"), ("es4_lr", "EmStat4 LR"), ("nexus1", "Nexus"), ("senswb", "Sensit Wearable"), ("mes4hr", "MultiEmStat4 HR"), ("mes4lr", "MultiEmStat4 LR")]
        where firmware.hasPrefix(prefix) { return name }
        return "unknown MethodSCRIPT device"
    }

    @inline(__always) static func hexValue(_ b: UInt8) -> Int32? {
        switch b {
        case 48...57: Int32(b - 48)
        case 65...70: Int32(b - 55)
        case 97...102: Int32(b - 87)
        default: nil
        }
    }

    /// Decodes one line (without its `\n`). Data packages go into `package` without allocating.
    public static func decode(_ line: UnsafeBufferPointer<UInt8>, into package: inout MSPackage) -> MSLine {
        guard let first = line.first else { return .scriptFinished }
        switch first {
        case UInt8(ascii: "P"):
            if let failure = decodePackage(line, into: &package) { return .malformed(failure) }
            return .package
        case UInt8(ascii: "T"):
            return .text(String(decoding: UnsafeBufferPointer(rebasing: line[1...]), as: UTF8.self))
        default: break
        }
        if let bang = line.firstIndex(of: UInt8(ascii: "!")) {
            guard let err = decodeError(line, at: bang) else { return .malformed(.unknownLine) }
            if first == UInt8(ascii: "Z") && bang == 1 { return .abortReply(error: err.code) }
            return .error(err)
        }
        if line.count == 1 {
            switch first {
            case UInt8(ascii: "e"): return .ack
            case UInt8(ascii: "*"): return .measurementLoopEnd
            case UInt8(ascii: "L"): return .loopStart
            case UInt8(ascii: "+"): return .loopEnd
            case UInt8(ascii: "-"): return .scanEnd
            case UInt8(ascii: "Z"): return .abortReply(error: nil)
            default: break
            }
        }
        if first == UInt8(ascii: "M") || first == UInt8(ascii: "C") {
            guard line.count == 5, let v = hex(line, 1, 4) else { return .malformed(.badLoopMarker) }
            return first == UInt8(ascii: "M") ? .measurementLoopStart(UInt16(v)) : .scanStart(UInt16(v))
        }
        if first >= UInt8(ascii: "a") && first <= UInt8(ascii: "z") && line.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) {
            return .reply(letter: first, text: String(decoding: UnsafeBufferPointer(rebasing: line[1...]), as: UTF8.self))
        }
        return .malformed(.unknownLine)
    }

    /// Convenience for tests and setup: decodes a `String` line.
    public static func decode(_ line: String, into package: inout MSPackage) -> MSLine {
        var bytes = Array(line.utf8)
        return bytes.withUnsafeMutableBufferPointer { decode(UnsafeBufferPointer($0), into: &package) }
    }

    /// The 7 hex digits of a package value at `p` (SWAR: the 8 bytes at `p` — the digits and the SI
    /// prefix after them — are read as one word, checked and converted lane-wise); nil when one
    /// is not a hex digit. Equal to `hex(line, i, 7)`, which the tests check over random input.
    @inline(__always) static func hex7(_ p: UnsafePointer<UInt8>) -> Int32? {
        let lanes: UInt64 = 0x0101_0101_0101_0101
        // Digits in lanes 0…6 (lane 0 the most significant); lane 7 (the prefix) becomes '0'.
        let x = (UInt64(littleEndian: UnsafeRawPointer(p).loadUnaligned(as: UInt64.self)) & 0x00FF_FFFF_FFFF_FFFF) | 0x3000_0000_0000_0000
        guard x & (lanes &* 0x80) == 0 else { return nil }  // ASCII only: no lane carries below
        let lower = x | (lanes &* 0x20)
        let digit = (x &+ lanes &* (0x80 - 0x30)) & ~(x &+ lanes &* (0x7F - 0x39)) & (lanes &* 0x80)
        let letter = (lower &+ lanes &* (0x80 - 0x61)) & ~(lower &+ lanes &* (0x7F - 0x66)) & (lanes &* 0x80)
        guard digit | letter == lanes &* 0x80 else { return nil }
        let nibbles = (x & (lanes &* 0x0F)) &+ (letter >> 7) &* 9
        let pairs = ((nibbles & 0x000F_000F_000F_000F) << 4) | ((nibbles >> 8) & 0x000F_000F_000F_000F)
        let quads = ((pairs & 0x0000_00FF_0000_00FF) << 8) | ((pairs >> 16) & 0x0000_00FF_0000_00FF)
        let word = ((quads & 0xFFFF) << 16) | ((quads >> 32) & 0xFFFF)
        return Int32(truncatingIfNeeded: word >> 4)
    }

    /// `n` hex digits from `start`; nil when one is not a hex digit. Branch-light: every digit is
    /// checked, and the verdict taken once at the end (the packages' hot path).
    @inline(__always) static func hex(_ line: UnsafeBufferPointer<UInt8>, _ start: Int, _ n: Int) -> Int32? {
        guard start >= 0, start + n <= line.count, let base = line.baseAddress else { return nil }
        var v: Int32 = 0
        var ok = true
        for i in start..<(start + n) {
            let b = base[i]
            let digit = Int32(b) &- 48
            let letter = Int32(b | 0x20) &- 87  // 'a'…'f' and 'A'…'F' → 10…15
            let isDigit = digit >= 0 && digit <= 9
            ok = ok && (isDigit || (letter >= 10 && letter <= 15))
            v = v << 4 | (isDigit ? digit : letter)
        }
        return ok ? v : nil
    }

    static func decodeError(_ line: UnsafeBufferPointer<UInt8>, at bang: Int) -> MSDeviceError? {
        guard let v = hex(line, bang + 1, 4) else { return nil }
        var err = MSDeviceError(code: UInt16(v))
        let rest = bang + 5
        if rest < line.count {
            guard line[rest] == UInt8(ascii: ":") else { return nil }
            let detail = String(decoding: UnsafeBufferPointer(rebasing: line[(rest + 1)...]), as: UTF8.self).trimmingCharacters(in: .whitespaces)
            err.detail = detail
            (err.line, err.column) = position(detail)
        }
        return err
    }

    /// Script position from an error's details: "Line 3, Col 7", "line 3 col 7", "3/7" or "3, 7".
    static func position(_ detail: String) -> (Int?, Int?) {
        let lower = detail.lowercased()
        func number(after key: String) -> Int? {
            guard let r = lower.range(of: key) else { return nil }
            let digits = lower[r.upperBound...].drop { !$0.isNumber }.prefix { $0.isNumber }
            return Int(digits)
        }
        if lower.contains("line") || lower.contains("col") { return (number(after: "line"), number(after: "col")) }
        let numbers = lower.split { !$0.isNumber }.compactMap { Int($0) }
        return (numbers.first, numbers.count > 1 ? numbers[1] : nil)
    }

    /// Decodes `P<var>;<var>…`; returns the failure or nil.
    static func decodePackage(_ line: UnsafeBufferPointer<UInt8>, into package: inout MSPackage) -> MSDecodeFailure? {
        package.reset()
        var i = 1
        let n = line.count
        guard n > 1 else { return .emptyPackage }
        while i < n {
            var end = i
            while end < n && line[end] != UInt8(ascii: ";") { end += 1 }
            // One variable: line[i..<end].
            guard end - i >= 10 else { return .variableTooShort }
            let t0 = line[i], t1 = line[i + 1]
            guard t0 >= 97 && t0 <= 122 && t1 >= 97 && t1 <= 122 else { return .badTypeCode }
            var v = MSVariable()
            v.type = UInt16(t0) << 8 | UInt16(t1)
            if line[i + 2] == 0x20 && line[i + 7] == UInt8(ascii: "n") && line[i + 8] == UInt8(ascii: "a") && line[i + 9] == UInt8(ascii: "n")
                && line[i + 3] == 0x20 && line[i + 4] == 0x20 && line[i + 5] == 0x20 && line[i + 6] == 0x20
            {
                v.value = .nan
            } else {
                guard let raw = hex7(line.baseAddress! + i + 2) else { return .badHexDigit }  // i + 10 ≤ end: 8 bytes are there
                guard let factor = prefixFactor(line[i + 9]) else { return .badPrefix }
                v.raw = raw - (1 << 27)
                v.prefix = line[i + 9]
                v.value = Double(v.raw) * factor
            }
            // Metadata: ",1X" status, ",2XX" range; other tokens are skipped.
            var m = i + 10
            while m < end {
                guard line[m] == UInt8(ascii: ",") else { return .badMetadata }
                var tEnd = m + 1
                while tEnd < end && line[tEnd] != UInt8(ascii: ",") { tEnd += 1 }
                let len = tEnd - m - 1
                guard len >= 1 else { return .badMetadata }
                for k in (m + 1)..<tEnd { guard hexValue(line[k]) != nil else { return .badMetadata } }
                if line[m + 1] == UInt8(ascii: "1") && len == 2 {
                    v.status = UInt8(hexValue(line[m + 2])!)
                } else if line[m + 1] == UInt8(ascii: "2") && len == 3 {
                    v.rangeIndex = Int16(hex(line, m + 2, 2)!)
                }
                m = tEnd
            }
            guard package.append(v) else { return .tooManyVariables }
            i = end + 1
            if end == n - 1 { return .emptyPackage }  // a trailing ';' leaves an empty variable
        }
        return nil
    }
}

/// Splits a byte stream into lines at `\n` (a `\r` before it is dropped), independent of read
/// boundaries. A line longer than `capacity` is discarded up to its `\n` and reported once.
public struct MSLineFramer: Sendable {
    public let capacity: Int
    private var buffer: [UInt8]
    private var count = 0
    private var overflowed = false

    public init(capacity: Int = 1024) {
        self.capacity = capacity
        buffer = [UInt8](repeating: 0, count: capacity)
    }

    public enum Output: Equatable {
        /// A complete line; read it with `withLine` before the next `push`.
        case line
        /// A line exceeded the capacity and was dropped.
        case overflow
    }

    public mutating func reset() {
        count = 0
        overflowed = false
    }

    /// Feeds one byte; returns `.line` when a line is complete.
    @inline(__always) public mutating func push(_ byte: UInt8) -> Output? {
        if byte == UInt8(ascii: "\n") {
            if overflowed {
                overflowed = false
                count = 0
                return .overflow
            }
            if count > 0 && buffer[count - 1] == UInt8(ascii: "\r") { count -= 1 }
            return .line
        }
        if count == -1 { count = 0 }
        if overflowed { return nil }
        guard count < capacity else {
            overflowed = true
            return nil
        }
        buffer[count] = byte
        count += 1
        return nil
    }

    /// Splits a chunk of bytes into lines, as `push` would byte by byte, but without copying the
    /// lines that lie wholly inside the chunk: `body` gets `.line` and the line (without `\n` or
    /// `\r`), or `.overflow` and an empty buffer. Bytes after the last `\n` wait for the next chunk.
    public mutating func feed(_ bytes: UnsafeBufferPointer<UInt8>, _ body: (Output, UnsafeBufferPointer<UInt8>) -> Void) {
        guard let base = bytes.baseAddress else { return }
        let n = bytes.count
        var start = 0
        while start < n {
            var j = start
            while j < n && base[j] != UInt8(ascii: "\n") { j += 1 }
            if j == n {
                for k in start..<n { _ = push(base[k]) }  // an unfinished line: keep it
                return
            }
            if count <= 0 && !overflowed {
                // The whole line is in this chunk: hand it over where it lies.
                var end = j
                if end > start && base[end - 1] == UInt8(ascii: "\r") { end -= 1 }
                if end - start > capacity {
                    body(.overflow, UnsafeBufferPointer(start: base, count: 0))
                } else {
                    body(.line, UnsafeBufferPointer(start: base + start, count: end - start))
                }
            } else {
                // It began in an earlier chunk: finish it in the buffer.
                for k in start..<j { _ = push(base[k]) }
                switch push(UInt8(ascii: "\n")) {
                case .line?: withLine { body(.line, $0) }
                case .overflow?: body(.overflow, UnsafeBufferPointer(start: base, count: 0))
                case nil: break
                }
            }
            start = j + 1
        }
    }

    /// The completed line; then the framer starts the next one.
    public mutating func withLine<R>(_ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
        let n = count
        count = 0
        return buffer.withUnsafeBufferPointer { body(UnsafeBufferPointer(rebasing: $0[0..<n])) }
    }
}
