import OperandoCore

// The device side of the DP5 packet format (Programmer's Guide Rev A7, section 4), written from
// the guide independently of AmptekDriver's codec so each checks the other.

/// Builds reply packets into one preallocated buffer.
struct SimPacketWriter {
    /// The largest reply: 8 header/checksum bytes + 32767 data bytes.
    static let capacity = 8 + 32767
    let buffer: UnsafeMutableRawBufferPointer

    init() { buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.capacity, alignment: 16) }

    func deallocate() { buffer.deallocate() }

    /// Where the data field starts.
    var data: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(rebasing: buffer[6...]) }

    /// Writes the header and the checksum around `length` bytes already in `data`; returns the
    /// whole packet.
    func finish(pid1: UInt8, pid2: UInt8, length: Int) -> UnsafeRawBufferPointer {
        precondition(length <= 32767)
        buffer[0] = 0xF5
        buffer[1] = 0xFA
        buffer[2] = pid1
        buffer[3] = pid2
        buffer[4] = UInt8(length >> 8)
        buffer[5] = UInt8(length & 0xFF)
        var sum: UInt32 = 0
        for i in 0..<(6 + length) { sum &+= UInt32(buffer[i]) }
        // The two's complement of the 16-bit sum: sum + checksum ≡ 0 (mod 65536).
        let check = UInt16(truncatingIfNeeded: 0x10000 - (sum & 0xFFFF))
        buffer[6 + length] = UInt8(check >> 8)
        buffer[7 + length] = UInt8(check & 0xFF)
        return UnsafeRawBufferPointer(rebasing: buffer[0..<(8 + length)])
    }

    /// An ACK packet (`FF code`), with an optional echoed command.
    func ack(_ code: UInt8, echo: [UInt8] = []) -> UnsafeRawBufferPointer {
        for (i, b) in echo.enumerated() { buffer[6 + i] = b }
        return finish(pid1: 0xFF, pid2: code, length: echo.count)
    }
}

/// Finds request packets in a byte stream (RS-232), as the DP5 does: bytes before the sync pair
/// are ignored (no ACK: over RS-232 a sync error cannot be answered), a LEN over 512 is a LEN
/// error, and a pause of more than 100 ms inside a packet discards it (the guide's gap timer).
struct SimRequestFramer {
    static let maxRequestData = 512
    static let gapNs: Int64 = 100_000_000
    private var bytes: [UInt8] = []
    private var lastByte = Int64.min

    init() { bytes.reserveCapacity(4096) }

    enum Output {
        /// A complete request (its checksum not checked yet).
        case request([UInt8])
        /// A header with a LEN no request may have.
        case lengthError
    }

    /// Takes bytes that arrived at host time `now` (ns); returns what they complete.
    mutating func push(_ new: UnsafeRawBufferPointer, now: Int64) -> [Output] {
        if !bytes.isEmpty, now - lastByte > Self.gapNs { bytes.removeAll(keepingCapacity: true) }
        lastByte = now
        bytes.append(contentsOf: new)
        var out: [Output] = []
        var i = 0
        while true {
            // Find F5 FA.
            while i < bytes.count && !(bytes[i] == 0xF5 && (i + 1 == bytes.count || bytes[i + 1] == 0xFA)) { i += 1 }
            guard bytes.count - i >= 6 else { break }
            let length = Int(bytes[i + 4]) << 8 | Int(bytes[i + 5])
            if length > Self.maxRequestData {
                out.append(.lengthError)
                i += 2
                continue
            }
            guard bytes.count - i >= 8 + length else { break }
            out.append(.request(Array(bytes[i..<(i + 8 + length)])))
            i += 8 + length
        }
        if i > 0 { bytes.removeFirst(min(i, bytes.count)) }
        return out
    }

    mutating func reset() { bytes.removeAll(keepingCapacity: true) }
}

/// The 64-byte status as the device writes it (Programmer's Guide 4.2.1).
struct SimStatus {
    var fastCount: UInt32 = 0
    var slowCount: UInt32 = 0
    var gpCount: UInt32 = 0
    var accumulationMs: UInt64 = 0
    var realTimeMs: UInt32 = 0
    var firmware: (major: UInt8, minor: UInt8, build: UInt8) = (6, 8, 0)
    var fpga: (major: UInt8, minor: UInt8) = (6, 12)
    var serialNumber: UInt32 = 0
    var highVoltage: Double = 0
    var detectorTemperatureK: Double = 0
    var boardTemperatureC: Int = 0
    var presetTimeReached = false
    var mcaEnabled = false
    var presetCountReached = false
    var configured = true
    var firstSinceReboot = false
    var clock80MHz = true
    var clockAuto = true
    var pc5Present = true
    var hvPositive = false
    var preamp8_5V = false
    /// 0 = DP5 (an X-123 reports its DP5).
    var deviceType: UInt8 = 0

    func write(to d: UnsafeMutableRawBufferPointer) {
        for i in 0..<64 { d[i] = 0 }
        func le32(_ v: UInt32, _ at: Int) {
            d[at] = UInt8(v & 0xFF)
            d[at + 1] = UInt8((v >> 8) & 0xFF)
            d[at + 2] = UInt8((v >> 16) & 0xFF)
            d[at + 3] = UInt8(v >> 24)
        }
        le32(fastCount, 0)
        le32(slowCount, 4)
        le32(gpCount, 8)
        // Accumulation time: byte 12 counts ms (0–99), bytes 13–15 count 100 ms.
        let acc = min(accumulationMs, 0xFF_FFFF * 100 + 99)
        d[12] = UInt8(acc % 100)
        let hundreds = UInt32(acc / 100)
        d[13] = UInt8(hundreds & 0xFF)
        d[14] = UInt8((hundreds >> 8) & 0xFF)
        d[15] = UInt8((hundreds >> 16) & 0xFF)
        le32(realTimeMs, 20)
        d[24] = firmware.major << 4 | (firmware.minor & 0x0F)
        d[25] = fpga.major << 4 | (fpga.minor & 0x0F)
        le32(serialNumber, 26)
        let hv = UInt16(bitPattern: Int16(clamping: Int((highVoltage * 2).rounded())))
        d[30] = UInt8(hv >> 8)
        d[31] = UInt8(hv & 0xFF)
        let t = UInt16(clamping: max(0, Int((detectorTemperatureK * 10).rounded()))) & 0x0FFF
        d[32] = UInt8(t >> 8)
        d[33] = UInt8(t & 0xFF)
        d[34] = UInt8(bitPattern: Int8(clamping: boardTemperatureC))
        var f35: UInt8 = 0x08  // GATE disabled: counting
        if presetTimeReached { f35 |= 0x80 }
        if mcaEnabled { f35 |= 0x20 }
        if presetCountReached { f35 |= 0x10 }
        if configured { f35 |= 0x02 }
        d[35] = f35
        var f36: UInt8 = 0
        if firstSinceReboot { f36 |= 0x20 }
        if clock80MHz { f36 |= 0x02 }
        if clockAuto { f36 |= 0x01 }
        d[36] = f36
        d[37] = firmware.build & 0x0F
        var f38: UInt8 = 0
        if pc5Present { f38 |= 0x80 }
        if hvPositive { f38 |= 0x40 }
        if preamp8_5V { f38 |= 0x20 }
        d[38] = f38
        d[39] = deviceType
    }
}
