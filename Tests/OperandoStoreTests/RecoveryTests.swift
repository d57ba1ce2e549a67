import Foundation
import OperandoCore
import OperandoIO
import XCTest

@testable import OperandoStore

/// Runs a dead daemon left behind: torn tails at every byte, damage in the middle, and the
/// rules on which runs may be recovered.
final class RecoveryTests: XCTestCase {
    var directory = ""
    let anchor = RealtimeAnchor(before: HostInstant(nanoseconds: 1_000), after: HostInstant(nanoseconds: 1_000), utcNanoseconds: 1_700_000_000_000_000_000, taiOffsetSeconds: 37)

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "operando-recovery-\(UUID().uuidString)"
        try FileSystem.makeDirectories(directory)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: directory) }

    static let streams = [
        StreamDescriptor(id: 0, name: "d/a", device: "d", kind: .samples, elementType: .float64, fields: [Field("x", unit: "V")], shape: [1], nominalRateHz: 10, maxPayloadBytes: 8),
        StreamDescriptor(id: 1, name: "d/b", device: "d", kind: .frames, elementType: .uint32, fields: [Field("c", unit: "counts")], shape: [5], nominalRateHz: 1, maxPayloadBytes: 20),
    ]

    /// A run as a killed daemon leaves it: manifest "recording", one segment, `count` records per
    /// stream alternating. Returns the run directory and each record's end offset in the segment.
    func writeRun(_ name: String, count: Int) throws -> (dir: String, ends: [(stream: UInt32, end: Int)]) {
        let dir = directory + "/" + name
        try FileSystem.makeDirectories(dir + "/segments")
        let manifest = RunManifest(
            id: UUID().uuidString, name: name, metadata: [:], startAnchor: anchor, startReason: "test", streams: Self.streams,
            provenance: Provenance(daemonVersion: "t", hostName: "h", configPath: "", configText: "", devices: [], libraries: [:]), durability: "d")
        try FileSystem.writeAtomically(dir + "/run.json", bytes: manifest.encoded())
        let writer = try SegmentWriter(directory: dir + "/segments", index: 1, runID: Array(repeating: 1, count: 16), anchor: anchor)
        var ends: [(UInt32, Int)] = []
        for k in 0..<count {
            for s in Self.streams {
                let payload: [UInt8] = s.id == 0 ? withUnsafeBytes(of: Double(k)) { Array($0) } : (0..<5).flatMap { c in withUnsafeBytes(of: UInt32(k * 5 + c)) { Array($0) } }
                let h = RecordHeader(kind: .data, streamID: s.id, sequence: UInt64(k), hostTime: HostInstant(nanoseconds: 2_000 + Int64(k) * 100_000_000), deviceTime: nil)
                try writer.append(SegmentFormat.encodeRecord(h, payload: payload))
                ends.append((s.id, writer.size))
            }
        }
        try writer.sync()
        return (dir, ends)
    }

    var segmentPath: (String) -> String { { $0 + "/segments/" + SegmentFormat.fileName(index: 1) } }

    /// Cut the segment at every byte offset of its last records: recovery keeps exactly the whole
    /// records before the cut, cuts the rest off, and says how much.
    func testTornTail_atEveryByteOffset_keepsEveryWholeRecordAndNothingElse() throws {
        let (original, ends) = try writeRun("whole", count: 4)
        let bytes = try FileSystem.readAll(segmentPath(original))
        let tailStart = ends[ends.count - 4].end  // the last four records' bytes
        for cut in tailStart...bytes.count {
            let dir = directory + "/cut"
            try? FileManager.default.removeItem(atPath: dir)
            try FileSystem.makeDirectories(dir + "/segments")
            try FileSystem.writeAtomically(dir + "/run.json", bytes: FileSystem.readAll(original + "/run.json"))
            try FileSystem.writeAtomically(segmentPath(dir), bytes: Array(bytes[0..<cut]))

            let m = try RunRecovery.recover(dir, by: "test", at: anchor)
            let whole = ends.filter { $0.end <= cut }
            let validEnd = whole.last?.end ?? 0
            XCTAssertEqual(m.state, .recovered)
            XCTAssertEqual(m.recovery?.records, whole.count, "cut at \(cut)")
            XCTAssertEqual(m.recovery?.tornBytesRemoved[SegmentFormat.fileName(index: 1)] ?? 0, cut - validEnd, "cut at \(cut)")
            XCTAssertEqual(m.recovery?.damaged, [])
            for s in Self.streams {
                let counts = try XCTUnwrap(m.summary?.first { $0.name == s.name })
                XCTAssertEqual(counts.written, UInt64(whole.filter { $0.stream == s.id }.count), "\(s.name), cut at \(cut)")
                XCTAssertEqual(counts.dropped, 0)
            }
            // The file now ends on its last whole record and reads back clean.
            let scan = try SegmentReader.read(segmentPath(dir)) { _ in }
            XCTAssertEqual(scan.tornTailBytes, 0, "cut at \(cut)")
            XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: segmentPath(dir))[.size] as? Int, validEnd)
            XCTAssertEqual(try RunManifest.load(dir + "/run.json").state, .recovered, "the manifest on disk says so")
        }
    }

    /// A damaged record in the middle is skipped and counted; everything around it is kept.
    func testDamageInTheMiddle_isSkippedCountedAndReported() throws {
        let (dir, ends) = try writeRun("damaged", count: 6)
        var bytes = try FileSystem.readAll(segmentPath(dir))
        // Flip a byte inside the payload of the 5th record (stream 0, sequence 2).
        let target = ends[4].end - 4
        bytes[target] ^= 0xFF
        try FileSystem.writeAtomically(segmentPath(dir), bytes: bytes)
        let m = try RunRecovery.recover(dir, by: "test", at: anchor)
        XCTAssertEqual(m.recovery?.damaged.count, 1)
        XCTAssertEqual(m.recovery?.records, 11)
        let a = try XCTUnwrap(m.summary?.first { $0.name == "d/a" })
        XCTAssertEqual(a.written, 5)
        XCTAssertEqual(a.dropped, 1, "the damaged record is a gap in the sequence numbers")
        XCTAssertEqual(a.produced, 6)
        XCTAssertEqual(m.summary?.first { $0.name == "d/b" }?.written, 6)
        XCTAssertNotNil(m.stopAnchor, "the run ends at its last record")
        XCTAssertEqual(m.stopAnchor?.host, HostInstant(nanoseconds: 2_000 + 5 * 100_000_000))
        XCTAssertTrue(m.stopReason?.contains("recovered") ?? false)
    }

    func testOnlyRunsLeftRecording_areRecovered_unlessForced() throws {
        let (dir, _) = try writeRun("once", count: 2)
        XCTAssertEqual(RunRecovery.unfinishedRuns(in: directory.replacingOccurrences(of: "/runs", with: "")).count, 0, "not under runs/")
        _ = try RunRecovery.recover(dir, by: "test", at: anchor)
        XCTAssertThrowsError(try RunRecovery.recover(dir, by: "test", at: anchor)) { e in
            XCTAssertTrue("\(e)".contains("nothing to recover"), "\(e)")
        }
        let again = try RunRecovery.recover(dir, by: "test", at: anchor, force: true)
        XCTAssertEqual(again.summary?.first?.written, 2)
        XCTAssertThrowsError(try RunRecovery.recover(directory + "/nowhere", by: "test", at: anchor)) { e in
            XCTAssertTrue("\(e)".contains("not a run directory"), "\(e)")
        }
    }

    func testUnfinishedRuns_listsTheRunsStillMarkedRecording() throws {
        let root = directory
        directory = root + "/runs"
        try FileSystem.makeDirectories(directory)
        let (a, _) = try writeRun("left-recording", count: 1)
        let (b, _) = try writeRun("closed", count: 1)
        _ = try RunRecovery.recover(b, by: "test", at: anchor)
        XCTAssertEqual(RunRecovery.unfinishedRuns(in: root), [a])
        directory = root
    }
}
