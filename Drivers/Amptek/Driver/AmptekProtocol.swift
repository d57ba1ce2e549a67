import OperandoCore

// The Amptek DP5 packet protocol (DP5, PX5, DP5G, MCA8000D and the X-123 family, which has a
// DP5 inside), as the DP5 Programmer's Guide (Rev A7, section 4) defines it. See
// /work/shared/protocols/amptek-dp5.md.
//
//     F5 FA  PID1 PID2  LEN_MSB LEN_LSB  data[LEN]  CHK_MSB CHK_LSB
//
// The checksum is the 16-bit two's complement of the byte sum of everything before it, so the
// 16-bit sum of those bytes plus the checksum (read as a big-endian u16) is 0.

/// A packet's type: its two packet-ID bytes.
public struct AmptekPacketID: Hashable, Sendable, CustomStringConvertible {
    public var pid1: UInt8
    public var pid2: UInt8

    @inlinable public init(_ pid1: UInt8, _ pid2: UInt8) {
        self.pid1 = pid1
        self.pid2 = pid2
    }

    /// "81 08": the two bytes in hex, as the Programmer's Guide tables list them.
    public var description: String { AmptekHex.byte(pid1) + " " + AmptekHex.byte(pid2) }

    // Requests (host → device), Programmer's Guide table 1.
    public static let requestStatus = AmptekPacketID(0x01, 0x01)
    public static let requestSpectrum = AmptekPacketID(0x02, 0x01)
    public static let requestSpectrumClear = AmptekPacketID(0x02, 0x02)
    public static let requestSpectrumStatus = AmptekPacketID(0x02, 0x03)
    public static let requestSpectrumStatusClear = AmptekPacketID(0x02, 0x04)
    public static let requestScopeData = AmptekPacketID(0x03, 0x01)
    public static let requestListData = AmptekPacketID(0x03, 0x09)
    public static let textConfiguration = AmptekPacketID(0x20, 0x02)
    public static let textConfigurationReadback = AmptekPacketID(0x20, 0x03)
    /// Text configuration that is not written to the device's flash memory.
    public static let textConfigurationVolatile = AmptekPacketID(0x20, 0x04)
    public static let clearSpectrum = AmptekPacketID(0xF0, 0x01)
    public static let enableMCA = AmptekPacketID(0xF0, 0x02)
    public static let disableMCA = AmptekPacketID(0xF0, 0x03)
    public static let keepAliveSharing = AmptekPacketID(0xF0, 0x20)
    public static let keepAliveNoSharing = AmptekPacketID(0xF0, 0x21)
    public static let echo = AmptekPacketID(0xF1, 0x7F)

    // Responses (device → host), Programmer's Guide tables 2 and 3.
    public static let status = AmptekPacketID(0x80, 0x01)
    public static let configurationReadback = AmptekPacketID(0x82, 0x07)
    public static let listData = AmptekPacketID(0x82, 0x0A)
    public static let listDataFIFOFull = AmptekPacketID(0x82, 0x0B)
    public static let echoReply = AmptekPacketID(0x8F, 0x7F)
    public static let ackOK = AmptekPacketID(0xFF, 0x00)
}

/// Limits of the packet format.
public enum AmptekPacket {
    public static let sync1: UInt8 = 0xF5
    public static let sync2: UInt8 = 0xFA
    /// Header (sync, PIDs, LEN) plus checksum.
    public static let overheadBytes = 8
    /// Largest data field the device sends (a packet of 32775 bytes).
    public static let maxReplyDataLength = 32767
    public static let maxReplyPacketBytes = overheadBytes + maxReplyDataLength
    /// Largest data field a request may carry (RS-232 receivers take less than 512 bytes).
    public static let maxRequestDataLength = 511

    /// The 16-bit two's complement of the byte sum of `bytes`.
    @inlinable public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt16 {
        var sum: UInt16 = 0
        for b in bytes { sum &+= UInt16(b) }
        return 0 &- sum
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt16 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// A whole packet: header, `data` and checksum.
    public static func encode(_ id: AmptekPacketID, data: [UInt8] = []) -> [UInt8] {
        precondition(data.count <= maxReplyDataLength, "a DP5 packet carries at most \(maxReplyDataLength) data bytes")
        var p: [UInt8] = [sync1, sync2, id.pid1, id.pid2, UInt8(data.count >> 8), UInt8(data.count & 0xFF)]
        p.reserveCapacity(overheadBytes + data.count)
        p += data
        let c = checksum(p)
        p.append(UInt8(c >> 8))
        p.append(UInt8(c & 0xFF))
        return p
    }
}

/// A problem with something the codec was asked to build or to parse.
public struct AmptekProtocolError: Error, Sendable, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a request is answered with.
public enum AmptekExpectedReply: Sendable, Equatable {
    /// An ACK packet (`FF 00` when all went well).
    case ack
    /// A status packet (`80 01`).
    case status
    /// A spectrum packet (`81 xx`), with or without the status after the counts.
    case spectrum(withStatus: Bool)
    /// A configuration readback packet (`82 07`).
    case configurationReadback
    /// An echo packet (`8F 7F`).
    case echo
    /// A list-mode data packet (`82 0A` / `82 0B`), or an ACK.
    case listData
}

/// A request packet (host → device), with a name for messages.
public struct AmptekRequest: Sendable, Equatable, CustomStringConvertible {
    public var id: AmptekPacketID
    public var data: [UInt8]
    /// "spectrum + status + clear": what the request asks for, for messages.
    public var name: String
    public var expectedReply: AmptekExpectedReply

    public init(_ id: AmptekPacketID, data: [UInt8] = [], name: String, expectedReply: AmptekExpectedReply) {
        self.id = id
        self.data = data
        self.name = name
        self.expectedReply = expectedReply
    }

    public var description: String { "\(name) (\(id))" }

    /// The bytes on the wire.
    public var encoded: [UInt8] { AmptekPacket.encode(id, data: data) }

    public static let status = AmptekRequest(.requestStatus, name: "status", expectedReply: .status)
    public static let spectrum = AmptekRequest(.requestSpectrum, name: "spectrum", expectedReply: .spectrum(withStatus: false))
    public static let spectrumClear = AmptekRequest(.requestSpectrumClear, name: "spectrum + clear", expectedReply: .spectrum(withStatus: false))
    public static let spectrumStatus = AmptekRequest(.requestSpectrumStatus, name: "spectrum + status", expectedReply: .spectrum(withStatus: true))
    /// The spectrum and status, and the MCA cleared in the same instant (no extra dead time).
    public static let spectrumStatusClear = AmptekRequest(.requestSpectrumStatusClear, name: "spectrum + status + clear", expectedReply: .spectrum(withStatus: true))
    public static let clearSpectrum = AmptekRequest(.clearSpectrum, name: "clear spectrum", expectedReply: .ack)
    public static let enableMCA = AmptekRequest(.enableMCA, name: "enable MCA", expectedReply: .ack)
    public static let disableMCA = AmptekRequest(.disableMCA, name: "disable MCA", expectedReply: .ack)
    public static let keepAliveSharing = AmptekRequest(.keepAliveSharing, name: "keep-alive (sharing allowed)", expectedReply: .ack)
    public static let keepAliveNoSharing = AmptekRequest(.keepAliveNoSharing, name: "keep-alive (no sharing)", expectedReply: .ack)
    public static let listData = AmptekRequest(.requestListData, name: "list-mode data", expectedReply: .listData)

    /// Text configuration ("MCAC=1024;PRET=10.0;"): stored in flash; answered with an ACK.
    public static func textConfiguration(_ text: String) throws(AmptekProtocolError) -> AmptekRequest {
        AmptekRequest(.textConfiguration, data: try textData(text), name: "text configuration \"\(text)\"", expectedReply: .ack)
    }

    /// Text configuration applied without writing the flash memory (FW 6.x, `20 04`).
    public static func textConfigurationVolatile(_ text: String) throws(AmptekProtocolError) -> AmptekRequest {
        AmptekRequest(.textConfigurationVolatile, data: try textData(text), name: "text configuration (not saved) \"\(text)\"", expectedReply: .ack)
    }

    /// Configuration readback: `text` lists the commands ("MCAC;PRET;"); the device answers
    /// with a `82 07` packet giving each one's value.
    public static func configurationReadback(_ text: String) throws(AmptekProtocolError) -> AmptekRequest {
        AmptekRequest(.textConfigurationReadback, data: try textData(text), name: "configuration readback \"\(text)\"", expectedReply: .configurationReadback)
    }

    /// Comm test: the device echoes `data` in an `8F 7F` packet.
    public static func echo(_ data: [UInt8]) throws(AmptekProtocolError) -> AmptekRequest {
        guard data.count <= AmptekPacket.maxRequestDataLength else {
            throw AmptekProtocolError("an echo request carries at most \(AmptekPacket.maxRequestDataLength) bytes, not \(data.count)")
        }
        return AmptekRequest(.echo, data: data, name: "echo", expectedReply: .echo)
    }

    private static func textData(_ text: String) throws(AmptekProtocolError) -> [UInt8] {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty else { throw AmptekProtocolError("a text configuration packet needs at least one command") }
        guard bytes.count <= AmptekPacket.maxRequestDataLength else {
            throw AmptekProtocolError("the text configuration is \(bytes.count) bytes; one packet carries at most \(AmptekPacket.maxRequestDataLength) (send fewer commands)")
        }
        guard bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw AmptekProtocolError("the text configuration must be printable ASCII without spaces: \(text.debugDescription)")
        }
        return bytes
    }
}

/// An acknowledge packet (`FF xx`): the device did what was asked, or says why not.
public struct AmptekAck: Sendable, Equatable, CustomStringConvertible {
    /// PID2 of the ACK packet.
    public var code: UInt8
    /// For text-configuration errors (05, 07, 0B) the device echoes the offending command and
    /// parameter in the data field.
    public var echoedCommand: String?

    public init(code: UInt8, echoedCommand: String? = nil) {
        self.code = code
        self.echoedCommand = echoedCommand.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Decodes an ACK's data field (the echoed command, when there is one).
    public init(code: UInt8, data: UnsafeRawBufferPointer) {
        self.init(code: code, echoedCommand: data.isEmpty ? nil : String(decoding: data, as: UTF8.self))
    }

    public static let ok: UInt8 = 0x00
    public static let syncError: UInt8 = 0x01
    public static let pidError: UInt8 = 0x02
    public static let lenError: UInt8 = 0x03
    public static let checksumError: UInt8 = 0x04
    public static let badParameter: UInt8 = 0x05
    public static let badHexRecord: UInt8 = 0x06
    public static let unrecognizedCommand: UInt8 = 0x07
    public static let fpgaError: UInt8 = 0x08
    public static let cp2201NotFound: UInt8 = 0x09
    public static let scopeDataNotAvailable: UInt8 = 0x0A
    public static let pc5NotPresent: UInt8 = 0x0B
    public static let okSharingRequest: UInt8 = 0x0C
    public static let busy: UInt8 = 0x0D
    public static let i2cError: UInt8 = 0x0E
    public static let okFPGAUploadAddress: UInt8 = 0x0F
    public static let featureNotSupported: UInt8 = 0x10
    public static let calibrationNotPresent: UInt8 = 0x11

    /// Every code the Programmer's Guide (Rev A7, table 3) defines.
    public static let allCodes: [UInt8] = Array(0x00...0x11)

    /// True for the codes that mean "done": OK, OK with a sharing request, OK with an FPGA
    /// upload address.
    public var isOK: Bool { code == Self.ok || code == Self.okSharingRequest || code == Self.okFPGAUploadAddress }

    /// The Programmer's Guide's name for the code.
    public var name: String {
        switch code {
        case Self.ok: "OK"
        case Self.syncError: "sync error"
        case Self.pidError: "PID error"
        case Self.lenError: "LEN error"
        case Self.checksumError: "checksum error"
        case Self.badParameter: "bad parameter"
        case Self.badHexRecord: "bad hex record"
        case Self.unrecognizedCommand: "unrecognized command"
        case Self.fpgaError: "FPGA error"
        case Self.cp2201NotFound: "CP2201 not found"
        case Self.scopeDataNotAvailable: "scope data not available"
        case Self.pc5NotPresent: "PC5 not present"
        case Self.okSharingRequest: "OK, with interface sharing request"
        case Self.busy: "busy, another interface is in use"
        case Self.i2cError: "I2C error"
        case Self.okFPGAUploadAddress: "OK, with FPGA upload address"
        case Self.featureNotSupported: "feature not supported by this FPGA version"
        case Self.calibrationNotPresent: "calibration data not present"
        default: "unknown ACK code 0x" + AmptekHex.byte(code)
        }
    }

    /// What happened, in a sentence.
    public var meaning: String {
        let echo = echoedCommand.map { " \($0.debugDescription)" } ?? ""
        switch code {
        case Self.ok: return "the request was received and carried out"
        case Self.syncError: return "the request did not start with the sync bytes F5 FA, so the detector rejected it"
        case Self.pidError: return "the detector does not know the request's packet ID (PID1/PID2)"
        case Self.lenError: return "the request's LEN field does not fit its packet type"
        case Self.checksumError: return "the request arrived with a wrong checksum"
        case Self.badParameter: return "a text command's parameter is not recognised or out of range:\(echo)"
        case Self.badHexRecord: return "a firmware or FPGA upload record had a checksum or structure error"
        case Self.unrecognizedCommand: return "the detector does not recognise the text command\(echo)"
        case Self.fpgaError: return "the FPGA is not initialised, so the detector cannot acquire or send a spectrum"
        case Self.cp2201NotFound: return "Ethernet settings were sent but this detector has no Ethernet controller (CP2201)"
        case Self.scopeDataNotAvailable: return "the digital oscilloscope has not triggered, so it has no data"
        case Self.pc5NotPresent: return "the command needs a PC5 detector supply, which is not fitted:\(echo)"
        case Self.okSharingRequest: return "the request was carried out; another host asks to share the interface"
        case Self.busy: return "another interface (USB, Ethernet or RS-232) is using the detector"
        case Self.i2cError: return "an I2C transfer got no acknowledge from the addressed device"
        case Self.okFPGAUploadAddress: return "the FPGA upload record was accepted"
        case Self.featureNotSupported: return "the request is valid but the installed FPGA version does not support it"
        case Self.calibrationNotPresent: return "the requested calibration data was never programmed into this detector"
        default: return "the detector answered with ACK code 0x\(AmptekHex.byte(code)), which the DP5 Programmer's Guide (Rev A7) does not define"
        }
    }

    /// What to do about it.
    public var advice: String {
        switch code {
        case Self.ok, Self.okFPGAUploadAddress: return ""
        case Self.syncError, Self.lenError:
            return "bytes were lost or mangled on the way: check the cable and that only one program writes to the detector"
        case Self.pidError:
            return "the firmware may be older than the request needs (configuration readback needs FW 6.01 or later): update the firmware"
        case Self.checksumError:
            return "bytes were corrupted on the way: check the cable, the baud rate (RS-232 runs at 115200 8N1) and grounding"
        case Self.badParameter:
            return "check the value against the DP5 Programmer's Guide ASCII command table (e.g. MCAC 256…8192, PRET 0…99999999.9 s, GAIN 0.75…150 on a DP5, 0.75…500 on a PX5)"
        case Self.badHexRecord: return "repeat the upload with an intact image file"
        case Self.unrecognizedCommand:
            return "check the spelling (4 upper-case letters, \"CMD=value;\", no spaces) and that this model and firmware support the command"
        case Self.fpgaError: return "power-cycle the detector; if it persists, reload the FPGA image or contact Amptek"
        case Self.cp2201NotFound: return "use USB or RS-232 with this detector"
        case Self.scopeDataNotAvailable: return "arm the oscilloscope and wait for a trigger before asking for its data"
        case Self.pc5NotPresent: return "remove the HV, cooler and preamp commands (HVSE, TECS, PAPS) for a detector without a PC5, or check the PC5 connection"
        case Self.okSharingRequest: return "keep polling to keep control of the detector, or stop to hand it over"
        case Self.busy: return "close the other program (e.g. Amptek DPPMCA) or unplug the other interface, then reconnect"
        case Self.i2cError: return "check the I2C address and that the addressed device is fitted"
        case Self.featureNotSupported: return "update the FPGA to the latest version, or do not use this feature"
        case Self.calibrationNotPresent: return "have the calibration programmed (contact Amptek) or do without it"
        default: return "update the driver or report the code together with the detector's firmware version"
        }
    }

    /// "ACK 07 unrecognized command: … ; check …".
    public var message: String {
        var s = "ACK \(AmptekHex.byte(code)) \(name): \(meaning)"
        if !advice.isEmpty { s += "; \(advice)" }
        return s
    }

    public var description: String { message }
}

/// What kind of packet a reply is, from its packet ID.
public enum AmptekReplyKind: Sendable, Equatable {
    case ack(code: UInt8)
    case status
    case spectrum(channels: Int, withStatus: Bool)
    case configurationReadback
    case listData(fifoFull: Bool)
    case echo
    /// Another data packet (`82 xx`: scope, misc data, diagnostics, …, or `83 01` SCA counters).
    case otherData
    /// Not a reply the DP5 sends.
    case unknown

    public init(_ id: AmptekPacketID) {
        switch (id.pid1, id.pid2) {
        case (0xFF, let code): self = .ack(code: code)
        case (0x80, 0x01): self = .status
        case (0x81, let p2):
            if let layout = AmptekSpectrum.layout(pid2: p2) {
                self = .spectrum(channels: layout.channels, withStatus: layout.withStatus)
            } else {
                self = .unknown
            }
        case (0x82, 0x07): self = .configurationReadback
        case (0x82, 0x0A): self = .listData(fifoFull: false)
        case (0x82, 0x0B): self = .listData(fifoFull: true)
        case (0x82, _), (0x83, 0x01): self = .otherData
        case (0x8F, 0x7F): self = .echo
        default: self = .unknown
        }
    }

    /// Whether this reply answers a request that expects `expected` (an ACK error answers any
    /// request and is not a match: the caller reports it).
    public func answers(_ expected: AmptekExpectedReply) -> Bool {
        switch (self, expected) {
        case (.ack(let c), .ack): AmptekAck(code: c).isOK
        case (.status, .status): true
        case (.spectrum(_, let s), .spectrum(let want)): s == want
        case (.configurationReadback, .configurationReadback): true
        case (.echo, .echo): true
        case (.listData, .listData): true
        case (.ack(let c), .listData): AmptekAck(code: c).isOK
        default: false
        }
    }

    /// Exactly the data length a reply of this packet ID must have, when it is fixed.
    public var fixedDataLength: Int? {
        switch self {
        case .status: AmptekStatus.byteCount
        case .spectrum(let n, let s): AmptekSpectrum.dataLength(channels: n, withStatus: s)
        default: nil
        }
    }
}

/// Why the framer threw bytes away.
public enum AmptekDiscardReason: Sendable, Equatable, CustomStringConvertible {
    /// Bytes that do not start with the sync bytes F5 FA.
    case noSync
    /// A packet whose checksum is wrong.
    case badChecksum(id: AmptekPacketID, dataLength: Int, received: UInt16, computed: UInt16)
    /// A header no reply can have (an unknown packet ID or a length that does not fit it).
    case implausibleHeader(id: AmptekPacketID, dataLength: Int)
    /// The start of a packet whose rest never came.
    case incomplete(id: AmptekPacketID?, dataLength: Int?, received: Int)

    public var description: String {
        switch self {
        case .noSync: "bytes without the sync pattern F5 FA"
        case .badChecksum(let id, let n, let r, let c):
            "a packet \(id) with \(n) data bytes failed its checksum (received 0x\(AmptekHex.word(r)), computed 0x\(AmptekHex.word(c)))"
        case .implausibleHeader(let id, let n): "a header \(id) with LEN \(n), which no DP5 reply has"
        case .incomplete(let id, let n, let have):
            if let id, let n { "an incomplete packet \(id) (\(have) of \(n + AmptekPacket.overheadBytes) bytes)" } else { "an incomplete packet header (\(have) bytes)" }
        }
    }
}

/// One thing the framer found.
public enum AmptekFrameItem {
    /// A whole packet with a good checksum. `data` points into the framer's buffer and is valid
    /// only during the callback. `startStamp` is the stamp passed with the bytes in which the
    /// framer first saw this packet's sync bytes (for a byte stream: when its first bytes came).
    case packet(AmptekPacketID, data: UnsafeRawBufferPointer, startStamp: Int64)
    /// A stretch of discarded bytes, reported once when the framer is back in sync (or flushed),
    /// with the first problem found in it.
    case discarded(bytes: Int, reason: AmptekDiscardReason)
}

/// Finds packets in bytes that arrive in any chunking: one byte at a time, several packets at
/// once, with garbage in between. After a bad checksum it steps one byte past the false start
/// and searches the bytes it holds again, so the next good packet is never lost.
///
/// Storage is allocated once; `feed` does not allocate. One thread at a time.
public final class AmptekFramer {
    public enum HeaderCheck: Sendable {
        /// Accept only headers of replies the DP5 sends, with the length their packet ID
        /// implies: a corrupted header is rejected at once instead of waiting for bytes that
        /// will never come.
        case replies
        /// Accept any packet ID with a data length up to the reply maximum.
        case any
    }

    public let headerCheck: HeaderCheck
    private let storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private var candidateStamp: Int64?
    private var stretchBytes = 0
    private var stretchReason: AmptekDiscardReason?
    private var lastStamp: Int64 = 0

    /// Bytes held: the start of a packet not complete yet.
    public var bufferedByteCount: Int { end - start }

    public init(headerCheck: HeaderCheck = .replies, capacity: Int = 2 * AmptekPacket.maxReplyPacketBytes + 8192) {
        self.headerCheck = headerCheck
        let size = max(capacity, 2 * AmptekPacket.maxReplyPacketBytes)
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Forgets everything held (after a reconnect).
    public func reset() {
        start = 0
        end = 0
        candidateStamp = nil
        stretchBytes = 0
        stretchReason = nil
    }

    /// Takes `bytes` (stamped with `stamp`, e.g. the read's host time) and reports every packet
    /// and discarded stretch they complete, in order.
    public func feed(_ bytes: UnsafeRawBufferPointer, stamp: Int64, _ body: (AmptekFrameItem) -> Void) {
        lastStamp = stamp
        var offset = 0
        while offset < bytes.count {
            let incoming = bytes.count - offset
            if storage.count - end < incoming && start > 0 { compact() }
            let n = min(storage.count - end, incoming)
            if n == 0 {
                // Cannot happen (a packet is at most half the buffer), but never spin: give up
                // what is held.
                addStretch(end - start, .incomplete(id: nil, dataLength: nil, received: end - start))
                start = 0
                end = 0
                candidateStamp = nil
                continue
            }
            (storage.baseAddress! + end).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
            end += n
            offset += n
            parse(stamp: stamp, body)
        }
        if start == end {
            start = 0
            end = 0
        }
    }

    /// Gives up on the packet being assembled (its rest is not coming: a reply timed out), and
    /// reports what was discarded. Bytes after its start are searched again.
    public func flush(_ body: (AmptekFrameItem) -> Void) {
        if end > start {
            let p = storage.baseAddress!.assumingMemoryBound(to: UInt8.self) + start
            let have = end - start
            var id: AmptekPacketID?
            var length: Int?
            if have >= 4 { id = AmptekPacketID(p[2], p[3]) }
            if have >= 6 { length = Int(p[4]) << 8 | Int(p[5]) }
            addStretch(1, .incomplete(id: id, dataLength: length, received: have))
            start += 1
            candidateStamp = nil
            parse(stamp: lastStamp, body)
        }
        reportStretch(body)
    }

    private func compact() {
        let held = end - start
        if held > 0 { storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: held) }
        start = 0
        end = held
    }

    private func addStretch(_ n: Int, _ reason: AmptekDiscardReason) {
        if stretchBytes == 0 { stretchReason = reason }
        stretchBytes += n
    }

    private func reportStretch(_ body: (AmptekFrameItem) -> Void) {
        guard stretchBytes > 0 else { return }
        let n = stretchBytes
        let reason = stretchReason ?? .noSync
        stretchBytes = 0
        stretchReason = nil
        body(.discarded(bytes: n, reason: reason))
    }

    private func plausible(_ id: AmptekPacketID, _ length: Int) -> Bool {
        guard length <= AmptekPacket.maxReplyDataLength else { return false }
        switch headerCheck {
        case .any: return true
        case .replies:
            let kind = AmptekReplyKind(id)
            switch kind {
            case .unknown: return false
            case .ack(let code): return code <= 0x1F && length <= 512
            case .echo: return length <= 512
            default:
                if let fixed = kind.fixedDataLength { return length == fixed }
                return true
            }
        }
    }

    private func parse(stamp: Int64, _ body: (AmptekFrameItem) -> Void) {
        let base = storage.baseAddress!.assumingMemoryBound(to: UInt8.self)
        while end > start {
            let p = base + start
            let available = end - start
            if p[0] != AmptekPacket.sync1 {
                var i = 1
                while i < available && p[i] != AmptekPacket.sync1 { i += 1 }
                addStretch(i, .noSync)
                start += i
                candidateStamp = nil
                continue
            }
            if candidateStamp == nil { candidateStamp = stamp }
            guard available >= 2 else { return }
            if p[1] != AmptekPacket.sync2 {
                addStretch(1, .noSync)
                start += 1
                candidateStamp = nil
                continue
            }
            guard available >= 6 else { return }
            let id = AmptekPacketID(p[2], p[3])
            let length = Int(p[4]) << 8 | Int(p[5])
            guard plausible(id, length) else {
                addStretch(1, .implausibleHeader(id: id, dataLength: length))
                start += 1
                candidateStamp = nil
                continue
            }
            let total = AmptekPacket.overheadBytes + length
            guard available >= total else { return }
            var sum: UInt16 = 0
            for k in 0..<(6 + length) { sum &+= UInt16(p[k]) }
            let received = UInt16(p[6 + length]) << 8 | UInt16(p[7 + length])
            guard sum &+ received == 0 else {
                addStretch(1, .badChecksum(id: id, dataLength: length, received: received, computed: 0 &- sum))
                start += 1
                candidateStamp = nil
                continue
            }
            reportStretch(body)
            let at = candidateStamp ?? stamp
            candidateStamp = nil
            start += total
            body(.packet(id, data: UnsafeRawBufferPointer(start: p + 6, count: length), startStamp: at))
        }
    }
}

/// Hex formatting without Foundation.
public enum AmptekHex {
    static let digits: [Character] = Array("0123456789ABCDEF")

    public static func byte(_ b: UInt8) -> String { String([digits[Int(b >> 4)], digits[Int(b & 0x0F)]]) }

    public static func word(_ w: UInt16) -> String { byte(UInt8(w >> 8)) + byte(UInt8(w & 0xFF)) }

    /// "F5 FA 01 01 …".
    public static func bytes<C: Collection>(_ c: C) -> String where C.Element == UInt8 { c.map(byte).joined(separator: " ") }
}
