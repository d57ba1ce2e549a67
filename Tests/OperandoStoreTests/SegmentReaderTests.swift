import Foundation
import OperandoCore
import OperandoIO
import XCTest

@testable import OperandoStore

final class SegmentReaderTests: XCTestCase {
    private func writeSegment(records: Int) throws -> (path: String, bytes: [UInt8]) {
        let dir = NSTemporaryDirectory() + "operando-seg-\(UUID().uuidString)"
        try FileSystem.makeDirectories(dir)
        let anchor = RealtimeAnchor(before: .init(nanoseconds: 0), after: .init(nanoseconds: 0), utcNanoseconds: 0, taiOffsetSeconds: 0)
        var bytes = SegmentFormat.header(index: 1, runID: Array(repeating: 7, count: 16), created: anchor)
        for i in 0..<records {
            bytes += SegmentFormat.encodeRecord(RecordHeader(kind: .data, streamID: 1, sequence: UInt64(i), hostTime: .init(nanoseconds: Int64(i)), deviceTime: nil), payload: Array(repeating: UInt8(i), count: 20))
        }
        let path = dir + "/000001.seg"
        try FileSystem.writeAtomically(path, bytes: bytes)
        return (path, bytes)
    }

    func testRead_whenTailIsTorn_returnsEveryWholeRecordAndMeasuresTheTear() throws {
        let (path, bytes) = try writeSegment(records: 10)
        let recordSize = RecordLayout.recordSize(payloadBytes: 20)
        for cut in [1, 8, 20, recordSize - 1] {
            try FileSystem.writeAtomically(path, bytes: Array(bytes.dropLast(cut)))
            var seqs: [UInt64] = []
            let scan = try SegmentReader.read(path) { seqs.append($0.header.sequence) }
            XCTAssertEqual(seqs, Array(0..<9), "cut \(cut)")
            XCTAssertEqual(scan.tornTailBytes, recordSize - cut)
            XCTAssertEqual(scan.validEnd, bytes.count - recordSize)
        }
    }

    func testRead_whenARecordInTheMiddleIsDamaged_skipsOnlyThatRecord() throws {
        var (path, bytes) = try writeSegment(records: 10)
        let recordSize = RecordLayout.recordSize(payloadBytes: 20)
        bytes[SegmentFormat.headerSize + 4 * recordSize + 50] ^= 0xFF  // a payload byte of record 4
        try FileSystem.writeAtomically(path, bytes: bytes)
        var seqs: [UInt64] = []
        let scan = try SegmentReader.read(path) { seqs.append($0.header.sequence) }
        XCTAssertEqual(seqs, [0, 1, 2, 3, 5, 6, 7, 8, 9])
        XCTAssertEqual(scan.damaged.count, 1)
        XCTAssertEqual(scan.damaged.first?.offset, SegmentFormat.headerSize + 4 * recordSize)
        XCTAssertEqual(scan.damaged.first?.length, recordSize)
        XCTAssertEqual(scan.tornTailBytes, 0)
    }

    func testRead_whenNotASegment_saysSo() throws {
        let (path, _) = try writeSegment(records: 0)
        try FileSystem.writeAtomically(path, bytes: Array("hello, this is not a segment at all, but it is long enough for a header....".utf8))
        XCTAssertThrowsError(try SegmentReader.read(path) { _ in }) { error in
            XCTAssertTrue("\(error)".contains("not an operandod segment"), "\(error)")
        }
    }
}
