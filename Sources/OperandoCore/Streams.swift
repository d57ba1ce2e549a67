/// The element type of a stream's values, with its size on the wire and on disk (little-endian).
public enum ElementType: String, Codable, Sendable, CaseIterable {
    case uint8 = "u8", uint16 = "u16", uint32 = "u32", uint64 = "u64"
    case int16 = "i16", int32 = "i32", int64 = "i64"
    case float32 = "f32", float64 = "f64"
    /// UTF-8 JSON documents (events, descriptors); variable size.
    case json

    /// Bytes per element; 1 for JSON (a byte stream).
    public var size: Int {
        switch self {
        case .uint8, .json: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64: 8
        }
    }
}

extension ElementType {
    /// The little-endian elements in `bytes` as Doubles (a trailing partial element is ignored).
    public func values(_ bytes: ArraySlice<UInt8>) -> [Double] {
        let n = bytes.count / size
        return bytes.withUnsafeBytes { b in
            (0..<n).map { i in
                let o = i * size
                switch self {
                case .uint8, .json: return Double(b[o])
                case .uint16: return Double(UInt16(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt16.self)))
                case .int16: return Double(Int16(littleEndian: b.loadUnaligned(fromByteOffset: o, as: Int16.self)))
                case .uint32: return Double(UInt32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
                case .int32: return Double(Int32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: Int32.self)))
                case .uint64: return Double(UInt64(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self)))
                case .int64: return Double(Int64(littleEndian: b.loadUnaligned(fromByteOffset: o, as: Int64.self)))
                case .float32: return Double(Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self))))
                case .float64: return Double(bitPattern: UInt64(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self)))
                }
            }
        }
    }
}

/// What a stream carries.
public enum StreamKind: String, Codable, Sendable {
    /// Rows of scalar fields (a potentiostat's E and I, a stage's position); a record holds one or more rows.
    case samples
    /// Whole arrays (a spectrum, a scan line, an image); a record holds one frame.
    case frames
    /// JSON events (stimulus, marker, state change, gap, alarm).
    case events
}

/// What to do when a stream's ring is full.
public enum OverflowPolicy: String, Codable, Sendable, CaseIterable {
    /// The producer waits for the writer. Nothing is dropped; the device's read loop slows.
    case block
    /// The oldest records not yet being written are discarded to make room.
    case dropOldest = "drop-oldest"
    /// The new record is discarded.
    case dropNewest = "drop-newest"
}

/// A named, unit-carrying column of a sample stream.
public struct Field: Codable, Sendable, Equatable {
    public var name: String
    public var unit: String
    public init(_ name: String, unit: String) {
        self.name = name
        self.unit = unit
    }
}

/// Describes one stream: what its records contain and how fast they come.
///
/// Descriptors are written into the run before any record of the stream, so a run is
/// self-describing and records from several hosts can be merged by run id and stream name.
public struct StreamDescriptor: Codable, Sendable, Equatable {
    /// Index of the stream within its run (assigned by the daemon; record headers carry it).
    public var id: UInt32
    /// `<device>/<stream>`, unique within a daemon.
    public var name: String
    public var device: String
    public var kind: StreamKind
    public var elementType: ElementType
    /// For samples: one entry per column. For frames: one entry naming the values and their unit.
    public var fields: [Field]
    /// Shape of one sample (samples: `[fields.count]`) or one frame (e.g. `[2048]` channels).
    public var shape: [Int]
    /// Expected records per second, used to size rings and estimate data rate.
    public var nominalRateHz: Double
    /// Largest payload one record may carry, in bytes.
    public var maxPayloadBytes: Int

    public init(
        id: UInt32 = 0, name: String, device: String, kind: StreamKind, elementType: ElementType,
        fields: [Field], shape: [Int], nominalRateHz: Double, maxPayloadBytes: Int
    ) {
        self.id = id
        self.name = name
        self.device = device
        self.kind = kind
        self.elementType = elementType
        self.fields = fields
        self.shape = shape
        self.nominalRateHz = nominalRateHz
        self.maxPayloadBytes = maxPayloadBytes
    }

    /// Bytes in one sample or frame.
    public var elementsPerItem: Int { shape.reduce(1, *) }
    public var bytesPerItem: Int { elementsPerItem * elementType.size }

    /// An events stream for a device.
    public static func events(device: String) -> StreamDescriptor {
        StreamDescriptor(
            name: "\(device)/events", device: device, kind: .events, elementType: .json, fields: [],
            shape: [], nominalRateHz: 1, maxPayloadBytes: 16 * 1024)
    }

    /// A device's clock observations, stored raw so a run can be refitted after the fact
    /// (`operandoctl refit`); see `ClockObservation` for the layout.
    public static func clock(device: String) -> StreamDescriptor {
        StreamDescriptor(
            name: "\(device)/clock", device: device, kind: .samples, elementType: .int64,
            fields: [Field("host_before", unit: "ns"), Field("host_after", unit: "ns"), Field("kind", unit: "0=bracketed,1=one-way,2=round-trip")],
            shape: [3], nominalRateHz: 10, maxPayloadBytes: ClockObservation.payloadBytes)
    }
}

/// One observation of a device's clock, as stored in its `<device>/clock` stream: the payload is
/// three little-endian i64 (`host_before`, `host_after`, `kind`), the record's device time is
/// the device's reading, and the record's host time is `host_after`.
///
/// - bracketed: the host read `hostBefore`, asked for the device's time, and read `hostAfter`
///   when the answer came;
/// - one-way: the device stamped something it sent with `deviceTime`, which arrived at
///   `hostAfter` (`hostBefore` = `hostAfter`); stored at most one per 100 ms, the one with the
///   least delay, since only the lower envelope matters;
/// - round trip: a request/reply of a device without a clock (no device time).
public struct ClockObservation: Sendable, Equatable {
    public enum Kind: Int64, Sendable {
        case bracketed = 0, oneWay = 1, roundTrip = 2
    }

    public static let payloadBytes = 24

    public var kind: Kind
    public var hostBefore: HostInstant
    public var hostAfter: HostInstant
    public var deviceTime: Int64?

    public init(kind: Kind, hostBefore: HostInstant, hostAfter: HostInstant, deviceTime: Int64?) {
        self.kind = kind
        self.hostBefore = hostBefore
        self.hostAfter = hostAfter
        self.deviceTime = deviceTime
    }

    /// Calls `body` with the payload bytes (no allocation).
    public func withPayload<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        var words = (hostBefore.nanoseconds.littleEndian, hostAfter.nanoseconds.littleEndian, kind.rawValue.littleEndian)
        return try withUnsafeBytes(of: &words) { (b) throws(E) -> R in try body(b) }
    }

    /// Decodes a stored record; nil when the payload is not a clock observation.
    public init?(payload: [UInt8], deviceTime: Int64?) {
        guard payload.count == Self.payloadBytes else { return nil }
        let w = payload.withUnsafeBytes { b in (0..<3).map { Int64(littleEndian: b.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) } }
        guard let kind = Kind(rawValue: w[2]), (kind == .roundTrip) == (deviceTime == nil) else { return nil }
        self.init(kind: kind, hostBefore: HostInstant(nanoseconds: w[0]), hostAfter: HostInstant(nanoseconds: w[1]), deviceTime: deviceTime)
    }
}

/// Per-stream accounting of a run. `produced` counts the sequence numbers the run covers
/// (records are numbered when offered, so a record discarded by an overflow policy still uses
/// one); `written` counts records in the run's segments; `dropped = produced − written`.
public struct StreamCounts: Codable, Sendable, Equatable {
    public var name: String
    public var produced: UInt64
    public var written: UInt64
    public var dropped: UInt64
    public var bytes: UInt64

    public init(name: String, produced: UInt64, written: UInt64, dropped: UInt64, bytes: UInt64) {
        self.name = name
        self.produced = produced
        self.written = written
        self.dropped = dropped
        self.bytes = bytes
    }
}

