import OperandoIO
import XCTest

final class CRC32CTests: XCTestCase {
    /// The check value of CRC-32C (Castagnoli) from the CRC catalogue, and RFC 3720 (iSCSI) B.4 vectors.
    func testChecksum_knownVectors_match() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }), 0x113F_DB5C)
        XCTAssertEqual(CRC32C.checksum([]), 0)
    }

    /// Buffers long enough for the three-stream path (3 × 8 KiB and more), at odd alignments.
    func testHardwareAndTable_onLongBuffers_agree() {
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        let bytes: [UInt8] = (0..<200_003).map { _ in
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
        for (start, length) in [(0, 24_576), (1, 24_576), (3, 24_577), (5, 49_151), (7, 100_000), (0, 200_003)] where start + length <= bytes.count {
            let slice = Array(bytes[start..<(start + length)])
            XCTAssertEqual(CRC32C.checksum(slice), CRC32C.softwareChecksum(slice), "start \(start) length \(length)")
        }
        // Continuing across a split lands on the same value.
        let first = bytes[0..<70_001].withUnsafeBytes { CRC32C.checksum($0) }
        XCTAssertEqual(bytes[70_001...].withUnsafeBytes { CRC32C.checksum($0, continuing: first) }, CRC32C.softwareChecksum(bytes))
    }

    func testHardwareAndTable_overManyLengthsAndSplits_agree() {
        var bytes = [UInt8]()
        var x: UInt32 = 12345
        for _ in 0..<1000 {
            x = x &* 1_103_515_245 &+ 12345
            bytes.append(UInt8(truncatingIfNeeded: x >> 16))
        }
        for length in [0, 1, 3, 7, 8, 9, 15, 16, 63, 64, 65, 255, 1000] {
            let slice = Array(bytes[0..<length])
            let whole = CRC32C.checksum(slice)
            XCTAssertEqual(whole, CRC32C.softwareChecksum(slice), "length \(length)")
            // Continuing over a split equals the checksum of the whole, at every split point.
            for split in stride(from: 0, through: length, by: max(1, length / 7)) {
                let first = slice[0..<split].withUnsafeBytes { CRC32C.checksum($0) }
                let both = slice[split...].withUnsafeBytes { CRC32C.checksum($0, continuing: first) }
                XCTAssertEqual(both, whole, "length \(length) split \(split)")
            }
        }
    }
}
