import OperandoCore

/// The 64-byte status (Programmer's Guide 4.2.1), alone in a `80 01` packet or after the counts
/// of a spectrum + status packet.
public struct AmptekStatus: Sendable, Equatable {
    public static let byteCount = 64

    /// Events seen by the fast channel since the last clear (bytes 0–3, little-endian).
    public var fastCount: UInt32
    /// Events counted in the spectrum since the last clear (bytes 4–7).
    public var slowCount: UInt32
    /// General-purpose counter (bytes 8–11).
    public var gpCount: UInt32
    /// Accumulation (live) time since the last clear, ms: byte 12 (0–99 ms) + bytes 13–15 × 100 ms.
    public var accumulationTimeMs: UInt32
    /// Real time of the acquisition since the last clear, ms (bytes 20–23; FW 6.01 and later).
    public var realTimeMs: UInt32
    public var firmwareMajor: UInt8
    public var firmwareMinor: UInt8
    /// Byte 37, low nibble (FW 6.06 and later).
    public var firmwareBuild: UInt8
    public var fpgaMajor: UInt8
    public var fpgaMinor: UInt8
    /// Bytes 26–29, little-endian.
    public var serialNumber: UInt32
    /// Detector bias, V (bytes 30–31: big-endian signed, 0.5 V per count).
    public var highVoltage: Double
    /// Detector temperature, K (byte 32 low nibble and byte 33, big-endian, 0.1 K per count).
    public var detectorTemperatureK: Double
    /// Board temperature, °C (byte 34, signed).
    public var boardTemperatureC: Int8
    /// Byte 35 bit 7: the preset (accumulation) time was reached and the MCA stopped.
    public var presetTimeReached: Bool
    /// Byte 35 bit 6.
    public var autoFastThresholdLocked: Bool
    /// Byte 35 bit 5.
    public var mcaEnabled: Bool
    /// Byte 35 bit 4: the preset count was reached and the MCA stopped.
    public var presetCountReached: Bool
    /// Byte 35 bit 3 (FW 6.06.07 and later): 1 = GATE disabled or inactive (counting).
    public var gateOpen: Bool
    /// Byte 35 bit 2.
    public var scopeDataReady: Bool
    /// Byte 35 bit 1.
    public var configured: Bool
    /// Byte 36 bit 7.
    public var autoInputOffsetSearching: Bool
    /// Byte 36 bit 6.
    public var mcsFinished: Bool
    /// Byte 36 bit 5 (FW 6.05 and later): the first status since the device rebooted.
    public var firstSinceReboot: Bool
    /// Byte 36 bit 1: FPGA clock 80 MHz (else 20 MHz).
    public var fpgaClock80MHz: Bool
    /// Byte 36 bit 0: the clock was chosen by `CLCK=AUTO`.
    public var fpgaClockAuto: Bool
    /// Byte 38 bit 7: a PC5 (detector supply board) was found at power-up; an X-123 has one.
    public var pc5Detected: Bool
    /// Byte 38 bit 6: the PC5 bias is positive (Si-PIN, CdTe); negative means an SDD.
    public var hvPositive: Bool
    /// Byte 38 bit 5: preamp supply ±8.5 V (else ±5 V).
    public var preampSupply8_5V: Bool
    /// Byte 39: 0 DP5, 1 PX5, 2 DP5G, 3 MCA8000D, 4 TB5, 5 DP5-X.
    public var deviceType: UInt8

    /// Decodes the first 64 bytes of `b`; nil when there are fewer.
    public init?(_ b: UnsafeRawBufferPointer) {
        guard b.count >= Self.byteCount else { return nil }
        func u32(_ o: Int) -> UInt32 { UInt32(b[o]) | UInt32(b[o + 1]) << 8 | UInt32(b[o + 2]) << 16 | UInt32(b[o + 3]) << 24 }
        fastCount = u32(0)
        slowCount = u32(4)
        gpCount = u32(8)
        accumulationTimeMs = UInt32(b[12]) + 100 * (UInt32(b[13]) | UInt32(b[14]) << 8 | UInt32(b[15]) << 16)
        realTimeMs = u32(20)
        firmwareMajor = b[24] >> 4
        firmwareMinor = b[24] & 0x0F
        fpgaMajor = b[25] >> 4
        fpgaMinor = b[25] & 0x0F
        serialNumber = u32(26)
        highVoltage = 0.5 * Double(Int16(bitPattern: UInt16(b[30]) << 8 | UInt16(b[31])))
        detectorTemperatureK = 0.1 * Double(UInt16(b[32] & 0x0F) << 8 | UInt16(b[33]))
        boardTemperatureC = Int8(bitPattern: b[34])
        let f35 = b[35]
        presetTimeReached = f35 & 0x80 != 0
        autoFastThresholdLocked = f35 & 0x40 != 0
        mcaEnabled = f35 & 0x20 != 0
        presetCountReached = f35 & 0x10 != 0
        gateOpen = f35 & 0x08 != 0
        scopeDataReady = f35 & 0x04 != 0
        configured = f35 & 0x02 != 0
        let f36 = b[36]
        autoInputOffsetSearching = f36 & 0x80 != 0
        mcsFinished = f36 & 0x40 != 0
        firstSinceReboot = f36 & 0x20 != 0
        fpgaClock80MHz = f36 & 0x02 != 0
        fpgaClockAuto = f36 & 0x01 != 0
        firmwareBuild = b[37] & 0x0F
        let f38 = b[38]
        pc5Detected = f38 & 0x80 != 0
        hvPositive = f38 & 0x40 != 0
        preampSupply8_5V = f38 & 0x20 != 0
        deviceType = b[39]
    }

    public init?(_ bytes: [UInt8]) {
        guard let s = bytes.withUnsafeBytes({ AmptekStatus($0) }) else { return nil }
        self = s
    }

    public var accumulationSeconds: Double { Double(accumulationTimeMs) / 1000 }
    public var realTimeSeconds: Double { Double(realTimeMs) / 1000 }

    /// Dead time as Amptek's software computes it: 100 × (1 − slow/fast) %.
    public var deadTimePercent: Double {
        if fastCount == 0 { return slowCount == 0 ? 0 : 100 }
        return 100 * (1 - Double(slowCount) / Double(fastCount))
    }

    /// "6.08.05" (major.minor.build).
    public var firmwareVersion: String { "\(firmwareMajor).\(Self.twoDigits(firmwareMinor)).\(Self.twoDigits(firmwareBuild))" }
    /// "6.12".
    public var fpgaVersion: String { "\(fpgaMajor).\(Self.twoDigits(fpgaMinor))" }

    /// The processor family from byte 39.
    public var deviceTypeName: String {
        switch deviceType {
        case 0: "DP5"
        case 1: "PX5"
        case 2: "DP5G"
        case 3: "MCA8000D"
        case 4: "TB5"
        case 5: "DP5-X"
        default: "device type \(deviceType)"
        }
    }

    /// What the status says the instrument is. A DP5 with a PC5 supply is an X-123 (or a DP5 +
    /// PC5 stack); the PC5's bias polarity tells an SDD (negative) from a Si-PIN or CdTe diode.
    public var modelName: String {
        guard deviceType == 0, pc5Detected else { return "Amptek \(deviceTypeName)" }
        return hvPositive ? "Amptek DP5 + PC5 (X-123, Si-PIN or CdTe)" : "Amptek DP5 + PC5 (X-123SDD)"
    }

    private static func twoDigits(_ v: UInt8) -> String { v < 10 ? "0\(v)" : "\(v)" }
}

/// Spectrum packets (`81 xx`, Programmer's Guide 4.2.2–4.2.13): 3 bytes per channel, least
/// significant first, from channel 0; the 64-byte status follows when PID2 is even.
public enum AmptekSpectrum {
    public static let bytesPerChannel = 3
    public static let channelCounts = [256, 512, 1024, 2048, 4096, 8192]

    /// Channels and status presence for PID2 01…0C; nil otherwise.
    @inlinable public static func layout(pid2: UInt8) -> (channels: Int, withStatus: Bool)? {
        guard pid2 >= 1, pid2 <= 0x0C else { return nil }
        return (256 << Int((pid2 - 1) / 2), pid2 % 2 == 0)
    }

    /// The PID2 of a spectrum reply.
    public static func pid2(channels: Int, withStatus: Bool) -> UInt8? {
        guard let k = channelCounts.firstIndex(of: channels) else { return nil }
        return UInt8(2 * k + 1) + (withStatus ? 1 : 0)
    }

    public static func dataLength(channels: Int, withStatus: Bool) -> Int {
        channels * bytesPerChannel + (withStatus ? AmptekStatus.byteCount : 0)
    }

    /// Decodes a spectrum packet's data into `counts` (which must hold the channels) without
    /// allocating; nil when PID2 is not a spectrum or the length does not match it.
    @inlinable public static func decode(
        pid2: UInt8, data: UnsafeRawBufferPointer, into counts: UnsafeMutableBufferPointer<UInt32>
    ) -> (channels: Int, status: AmptekStatus?)? {
        guard let (n, withStatus) = layout(pid2: pid2), data.count == dataLength(channels: n, withStatus: withStatus), counts.count >= n else { return nil }
        let d = data.baseAddress!.assumingMemoryBound(to: UInt8.self)
        for i in 0..<n {
            let o = 3 * i
            counts[i] = UInt32(d[o]) | UInt32(d[o + 1]) << 8 | UInt32(d[o + 2]) << 16
        }
        let status = withStatus ? AmptekStatus(UnsafeRawBufferPointer(rebasing: data[(3 * n)...])) : nil
        return (n, status)
    }

    /// Decodes into new arrays (tests, tools).
    public static func decode(pid2: UInt8, data: [UInt8]) -> (counts: [UInt32], status: AmptekStatus?)? {
        var counts = [UInt32](repeating: 0, count: 8192)
        let r = data.withUnsafeBytes { d in counts.withUnsafeMutableBufferPointer { decode(pid2: pid2, data: d, into: $0) } }
        guard let r else { return nil }
        return (Array(counts[0..<r.channels]), r.status)
    }
}

/// One ASCII command of a text configuration: `name` is 4 characters; `value` is absent in a
/// readback template ("MCAC;").
public struct AmptekTextCommand: Sendable, Equatable, CustomStringConvertible {
    public var name: String
    public var value: String?

    public init(_ name: String, _ value: String? = nil) {
        self.name = name
        self.value = value
    }

    public var description: String { value.map { "\(name)=\($0);" } ?? "\(name);" }
}

/// Text configuration (Programmer's Guide 4.1.18–4.1.19 and section 5): commands of 4
/// characters, "=", a parameter of at most 10 characters, ";", upper case, no whitespace.
public enum AmptekTextConfig {
    public static let maxParameterLength = 10

    /// Parses "THSL=1.5;TPEA=3.2;" into commands. Letters are upper-cased and whitespace is
    /// removed first (the device allows neither). With `requireValues`, every command needs a
    /// parameter (a configuration); without, parameters are optional (a readback reply).
    public static func parse(_ text: String, requireValues: Bool = true) throws(AmptekProtocolError) -> [AmptekTextCommand] {
        let cleaned = String(text.filter { !$0.isWhitespace }).uppercased()
        guard !cleaned.isEmpty else { return [] }
        var commands: [AmptekTextCommand] = []
        let parts = cleaned.split(separator: ";", omittingEmptySubsequences: false)
        for (i, part) in parts.enumerated() {
            if part.isEmpty {
                if i == parts.count - 1 { break }
                throw AmptekProtocolError("empty command (two semicolons in a row) in \(text.debugDescription)")
            }
            let pieces = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(pieces[0])
            guard name.count == 4, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
                throw AmptekProtocolError("\(String(part).debugDescription) is not a DP5 command: a command is 4 letters or digits, then \"=\", the value and \";\" (e.g. \"TPEA=3.2;\")")
            }
            var value: String?
            if pieces.count == 2 {
                let v = String(pieces[1])
                guard !v.isEmpty else { throw AmptekProtocolError("\(name) has \"=\" but no value") }
                guard v.count <= maxParameterLength else {
                    throw AmptekProtocolError("the value of \(name) is \(v.count) characters; the DP5 takes at most \(maxParameterLength)")
                }
                guard v.allSatisfy({ $0.isASCII && $0 != "=" }) else { throw AmptekProtocolError("the value of \(name) must be plain ASCII: \(v.debugDescription)") }
                value = v
            }
            if requireValues, value == nil { throw AmptekProtocolError("\(name) needs a value (\"\(name)=…;\")") }
            commands.append(AmptekTextCommand(name, value))
        }
        return commands
    }

    /// "MCAC=1024;PRET=10.0;".
    public static func format(_ commands: [AmptekTextCommand]) -> String { commands.map(\.description).joined() }

    /// The readback template for commands that were sent: names only ("MCAC;PRET;"), except
    /// SCAI, which selects the SCA the following commands read and keeps its value. RESC has
    /// no readback and is left out.
    public static func readbackTemplate(_ commands: [AmptekTextCommand]) -> String {
        commands.compactMap { c -> String? in
            if c.name == "RESC" { return nil }
            if c.name == "SCAI" { return c.description }
            return "\(c.name);"
        }.joined()
    }

    /// Whether a value read back agrees with the value sent: numbers within `relativeTolerance`
    /// (or 0.0015 absolute; the device rounds to its own steps and prints fixed decimals; units
    /// such as "US" or "%" are ignored, as the device ignores them); words by the device's
    /// rule that the first two letters suffice ("OF" = "OFF"); "0" and "OFF" are the same.
    public static func valuesAgree(sent: String, readBack: String, relativeTolerance: Double = 0.02) -> Bool {
        let s = sent.uppercased()
        let r = readBack.uppercased()
        if r.contains("?") { return false }
        let sn = number(s)
        let rn = number(r)
        if let a = sn, let b = rn { return abs(a - b) <= max(0.0015, relativeTolerance * max(abs(a), abs(b))) }
        let off: (String, Double?) -> Bool = { text, n in text.hasPrefix("OF") || n == 0 }
        if off(s, sn) && off(r, rn) { return true }
        if sn != nil || rn != nil { return false }
        if s == r { return true }
        return s.count >= 2 && r.count >= 2 && (r.hasPrefix(s) || s.hasPrefix(r))
    }

    /// The number at the start of a parameter ("3.2US" → 3.2), when it starts with one.
    public static func number(_ text: String) -> Double? {
        var digits = ""
        for c in text {
            if c.isNumber || c == "." || ((c == "-" || c == "+") && digits.isEmpty) { digits.append(c) } else { break }
        }
        guard digits.contains(where: \.isNumber) else { return nil }
        let rest = text.dropFirst(digits.count)
        guard rest.allSatisfy({ $0.isLetter || $0 == "%" }) else { return nil }
        return Double(digits)
    }

    /// `value` with `decimals` decimals, without Foundation ("10.0", "20.000").
    public static func fixed(_ value: Double, decimals: Int) -> String {
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(value) * scale).rounded()
        let whole = Int64(scaled / scale)
        let frac = Int64(scaled - Double(whole) * scale)
        var s = (value < 0 && scaled > 0 ? "-" : "") + "\(whole)"
        if decimals > 0 {
            let f = "\(frac)"
            s += "." + String(repeating: "0", count: max(0, decimals - f.count)) + f
        }
        return s
    }
}
