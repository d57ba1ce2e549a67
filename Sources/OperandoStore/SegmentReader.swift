import OperandoCore
import OperandoIO

/// One record read back from a segment.
public struct StoredRecord: Sendable {
    public var header: RecordHeader
    public var payload: [UInt8]
    /// Byte offset of the record's prefix in its segment file.
    public var offset: Int
}

/// What reading a segment found besides good records.
public struct SegmentScan: Sendable {
    public var path: String
    public var records: Int = 0
    /// Damaged regions skipped in the middle (bad CRC, impossible length), as (offset, length).
    public var damaged: [(offset: Int, length: Int)] = []
    /// Bytes at the end that do not form a complete valid record (a torn write).
    public var tornTailBytes = 0
    /// Where the valid data ends: truncating here removes the torn tail.
    public var validEnd = 0
    public var headerValid = false
}

/// Reads segment files, verifying every record's CRC-32C. Damaged records are skipped by
/// searching forward on the 8-byte alignment for the next record whose length and CRC check.
public enum SegmentReader {
    public struct Failure: Error, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "\(path): \(reason)" }
    }

    /// Reads every valid record of the segment at `path`, calling `body` for each.
    @discardableResult
    public static func read(_ path: String, _ body: (StoredRecord) throws -> Void) throws -> SegmentScan {
        let bytes = try FileSystem.readAll(path)
        var scan = SegmentScan(path: path)
        guard bytes.count >= SegmentFormat.headerSize, Array(bytes[0..<8]) == SegmentFormat.magic else {
            throw Failure(path: path, reason: "not an operandod segment (bad magic or shorter than its 64-byte header)")
        }
        let version = bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) }
        guard version == SegmentFormat.version else {
            throw Failure(path: path, reason: "segment format version \(version); this build reads version \(SegmentFormat.version)")
        }
        scan.headerValid = true
        try bytes.withUnsafeBytes { b in
            var offset = SegmentFormat.headerSize
            var damageStart: Int?
            scan.validEnd = offset
            while offset + RecordLayout.prefixSize + RecordLayout.headerSize <= b.count {
                if let record = decode(b, at: offset) {
                    if let start = damageStart {
                        scan.damaged.append((start, offset - start))
                        damageStart = nil
                    }
                    try body(StoredRecord(header: record.header, payload: record.payload, offset: offset))
                    scan.records += 1
                    offset += record.size
                    scan.validEnd = offset
                } else {
                    if damageStart == nil { damageStart = offset }
                    offset += RecordLayout.alignment
                }
            }
            // Whatever follows the last good record is a torn tail (or damage running to the end).
            scan.tornTailBytes = b.count - scan.validEnd
        }
        return scan
    }

    private static func decode(_ b: UnsafeRawBufferPointer, at offset: Int) -> (header: RecordHeader, payload: [UInt8], size: Int)? {
        let bodyLength = Int(UInt32(littleEndian: b.loadUnaligned(fromByteOffset: offset, as: UInt32.self)))
        // The whole padded record must be there: the writer appends whole records, so a record
        // missing even its padding was torn.
        guard bodyLength >= RecordLayout.headerSize,
            offset + RecordLayout.recordSize(payloadBytes: bodyLength - RecordLayout.headerSize) <= b.count
        else { return nil }
        let crc = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
        let body = UnsafeRawBufferPointer(rebasing: b[(offset + RecordLayout.prefixSize)..<(offset + RecordLayout.prefixSize + bodyLength)])
        guard CRC32C.checksum(body) == crc, let header = RecordHeader.load(from: body.baseAddress!) else { return nil }
        let payload = Array(body[RecordLayout.headerSize...])
        return (header, payload, RecordLayout.recordSize(payloadBytes: bodyLength - RecordLayout.headerSize))
    }
}
