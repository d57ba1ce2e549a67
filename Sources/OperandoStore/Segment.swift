#if canImport(Glibc)
import Glibc
#endif
import OperandoCore
import OperandoIO

/// Segment files: `segments/000001.seg`, … in a run directory.
///
/// A segment is a 64-byte file header followed by records in `RecordLayout` form, appended only.
/// ```
/// header: 8  magic "OPRNSEG1"
///         u32 format version (1)   u32 header size (64)
///         u64 segment index (from 1)
///         16  run id (raw bytes of the run's UUID)
///         i64 host time at creation (CLOCK_MONOTONIC_RAW ns)
///         i64 UTC at creation (ns since the Unix epoch)
///         u32 crc32c of the 56 bytes before it, then 4 bytes zero
/// ```
/// Each segment begins with the descriptors of every stream and a realtime anchor, so any
/// segment can be read on its own.
public enum SegmentFormat {
    public static let magic: [UInt8] = Array("OPRNSEG1".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 64

    public static func fileName(index: Int) -> String {
        let digits = String(index)
        return String(repeating: "0", count: max(0, 6 - digits.count)) + digits + ".seg"
    }

    public static func header(index: Int, runID: [UInt8], created: RealtimeAnchor) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: headerSize)
        h.withUnsafeMutableBytes { b in
            magic.withUnsafeBytes { b.copyMemory(from: $0) }
            b.storeBytes(of: version.littleEndian, toByteOffset: 8, as: UInt32.self)
            b.storeBytes(of: UInt32(headerSize).littleEndian, toByteOffset: 12, as: UInt32.self)
            b.storeBytes(of: UInt64(index).littleEndian, toByteOffset: 16, as: UInt64.self)
            for i in 0..<min(16, runID.count) { b[24 + i] = runID[i] }
            b.storeBytes(of: created.host.nanoseconds.littleEndian, toByteOffset: 40, as: Int64.self)
            b.storeBytes(of: created.utcNanoseconds.littleEndian, toByteOffset: 48, as: Int64.self)
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<56]))
            b.storeBytes(of: crc.littleEndian, toByteOffset: 56, as: UInt32.self)
        }
        return h
    }

    /// Encodes a standalone record (descriptor, anchor, event written by the writer itself) with its CRC.
    public static func encodeRecord(_ header: RecordHeader, payload: [UInt8]) -> [UInt8] {
        let size = RecordLayout.recordSize(payloadBytes: payload.count)
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { b in
            let bodyLength = RecordLayout.headerSize + payload.count
            b.storeBytes(of: UInt32(bodyLength).littleEndian, as: UInt32.self)
            header.store(to: b.baseAddress! + RecordLayout.prefixSize)
            payload.withUnsafeBytes { p in
                if p.count > 0 { (b.baseAddress! + RecordLayout.prefixSize + RecordLayout.headerSize).copyMemory(from: p.baseAddress!, byteCount: p.count) }
            }
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: b.baseAddress! + RecordLayout.prefixSize, count: bodyLength))
            b.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
        }
        return bytes
    }
}

/// Appends to one segment file.
public final class SegmentWriter {
    public let path: String
    public let index: Int
    private let fd: FileDescriptor
    public private(set) var size: Int
    public private(set) var unsyncedBytes = 0
    public let created: HostInstant

    public init(directory: String, index: Int, runID: [UInt8], anchor: RealtimeAnchor) throws {
        self.index = index
        path = directory + "/" + SegmentFormat.fileName(index: index)
        fd = try FileDescriptor.open(path, flags: O_WRONLY | O_CREAT | O_EXCL | O_APPEND, mode: 0o644)
        let header = SegmentFormat.header(index: index, runID: runID, created: anchor)
        try fd.writeAll(header)
        size = header.count
        created = anchor.host
        // The new directory entry must survive power loss too.
        try FileSystem.syncDirectory(directory)
    }

    deinit { fd.close() }

    /// Appends whole records. When the write fails part-way (a full disk accepts a short write
    /// before it refuses), the partial bytes are cut off again, so the segment still ends on a
    /// whole record and nothing written before is touched.
    public func append(_ parts: [UnsafeRawBufferPointer]) throws {
        do {
            try fd.writeAll(parts)
        } catch {
            try? fd.truncate(to: size)
            throw error
        }
        let n = parts.reduce(0) { $0 + $1.count }
        size += n
        unsyncedBytes += n
    }

    public func append(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try append([$0]) }
    }

    /// fdatasync: everything appended so far is durable when this returns.
    public func sync() throws {
        guard unsyncedBytes > 0 else { return }
        try fd.dataSync()
        unsyncedBytes = 0
    }
}
