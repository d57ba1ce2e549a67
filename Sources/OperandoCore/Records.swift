/// The record layout shared by rings and segment files.
///
/// A record is an 8-byte prefix followed by a body, padded to a multiple of 8 bytes:
///
/// ```
/// prefix: u32 bodyLength (bytes, excluding prefix and padding)
///         u32 crc32c(body)          (filled by the writer just before the bytes go to disk)
/// body:   u8  kind  (RecordKind)
///         u8  flags (bit 0: CRC computed by the producer; other bits 0)
///         u16 reserved
///         u32 streamID
///         u64 sequence              (per stream, from 0, consumed even when a record is dropped)
///         i64 hostTime              (CLOCK_MONOTONIC_RAW ns)
///         i64 deviceTime            (device clock ns, or Int64.min when the device has none)
///         ... payload ...
/// ```
/// All integers little-endian. Because rings store exactly these bytes, the writer moves them
/// to disk with one `writev` and no copy; a reader verifies each record with its CRC and
/// resynchronises on the 8-byte alignment after a torn or damaged record.
public enum RecordLayout {
    public static let prefixSize = 8
    public static let headerSize = 32
    public static let alignment = 8
    /// Device time value meaning "no device time".
    public static let noDeviceTime = Int64.min
    /// Flag (header byte 1): the producer computed the CRC already (large records; the flag is
    /// covered by the CRC like every body byte, and readers need not look at it).
    public static let producerChecksummed: UInt8 = 1

    /// Bytes a record with `payloadBytes` of payload occupies, prefix and padding included.
    @inlinable public static func recordSize(payloadBytes: Int) -> Int {
        let raw = prefixSize + headerSize + payloadBytes
        return (raw + alignment - 1) & ~(alignment - 1)
    }
}

public enum RecordKind: UInt8, Sendable {
    /// JSON `StreamDescriptor`.
    case descriptor = 1
    /// Samples or a frame of a stream, raw little-endian values.
    case data = 2
    /// JSON `Event`.
    case event = 3
    /// JSON `RealtimeAnchor`.
    case anchor = 4
}

/// The decoded fixed part of a record body.
public struct RecordHeader: Sendable, Equatable {
    public var kind: RecordKind
    public var streamID: UInt32
    public var sequence: UInt64
    public var hostTime: HostInstant
    public var deviceTime: Int64?

    public init(kind: RecordKind, streamID: UInt32, sequence: UInt64, hostTime: HostInstant, deviceTime: Int64?) {
        self.kind = kind
        self.streamID = streamID
        self.sequence = sequence
        self.hostTime = hostTime
        self.deviceTime = deviceTime
    }

    /// Writes the 32 header bytes at `base`.
    @inlinable public func store(to base: UnsafeMutableRawPointer) {
        base.storeBytes(of: UInt32(kind.rawValue).littleEndian, toByteOffset: 0, as: UInt32.self)
        base.storeBytes(of: streamID.littleEndian, toByteOffset: 4, as: UInt32.self)
        base.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
        base.storeBytes(of: hostTime.nanoseconds.littleEndian, toByteOffset: 16, as: Int64.self)
        base.storeBytes(of: (deviceTime ?? RecordLayout.noDeviceTime).littleEndian, toByteOffset: 24, as: Int64.self)
    }

    /// Reads a header from 32 bytes at `base`; nil if the kind is unknown.
    public static func load(from base: UnsafeRawPointer) -> RecordHeader? {
        guard let kind = RecordKind(rawValue: base.load(fromByteOffset: 0, as: UInt8.self)) else { return nil }
        let device = Int64(littleEndian: base.loadUnaligned(fromByteOffset: 24, as: Int64.self))
        return RecordHeader(
            kind: kind,
            streamID: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
            sequence: UInt64(littleEndian: base.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            hostTime: HostInstant(nanoseconds: Int64(littleEndian: base.loadUnaligned(fromByteOffset: 16, as: Int64.self))),
            deviceTime: device == RecordLayout.noDeviceTime ? nil : device)
    }
}
