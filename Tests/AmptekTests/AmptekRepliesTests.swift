import AmptekDriver
import XCTest

/// Level 1: the status and spectrum layouts of Programmer's Guide 4.2.1–4.2.13, decoded from
/// hand-built vectors with known values.
final class AmptekRepliesTests: XCTestCase {
    /// A status with every field set to a value that shows byte order and scaling.
    static let statusVector: [UInt8] = {
        var b = [UInt8](repeating: 0, count: 64)
        b[0...3] = [0x04, 0x03, 0x02, 0x01]  // fast count 0x01020304 = 16909060
        b[4...7] = [0x40, 0xE2, 0x01, 0x00]  // slow count 123456
        b[8...11] = [0x07, 0x00, 0x00, 0x00]  // GP counter 7
        b[12] = 57  // accumulation: 57 ms
        b[13...15] = [0xD2, 0x04, 0x00]  // + 1234 × 100 ms = 123457 ms
        b[16...19] = [0xAA, 0xBB, 0xCC, 0xDD]  // unused on a DP5: must not leak into anything
        b[20...23] = [0x40, 0x42, 0x0F, 0x00]  // real time 1000000 ms
        b[24] = 0x68  // firmware 6.8
        b[25] = 0x6C  // FPGA 6.12
        b[26...29] = [0x40, 0xE2, 0x01, 0x00]  // serial number 123456
        b[30...31] = [0xFD, 0xF8]  // HV: -520 × 0.5 V = -260 V
        b[32...33] = [0xF8, 0x98]  // detector temperature: high nibble ignored, 0x898 = 2200 → 220.0 K
        b[34] = 0xE2  // board temperature -30 °C
        b[35] = 0xA2  // preset time reached, MCA enabled, configured
        b[36] = 0x23  // first status since reboot, 80 MHz, clock chosen by AUTO
        b[37] = 0xF5  // firmware build 5 (low nibble)
        b[38] = 0x80  // PC5 present, negative HV (SDD), ±5 V preamp
        b[39] = 0  // DP5
        return b
    }()

    func testStatus_decodesEveryFieldOfAHandBuiltVector() throws {
        let s = try XCTUnwrap(AmptekStatus(Self.statusVector))
        XCTAssertEqual(s.fastCount, 16_909_060)
        XCTAssertEqual(s.slowCount, 123_456)
        XCTAssertEqual(s.gpCount, 7)
        XCTAssertEqual(s.accumulationTimeMs, 123_457)
        XCTAssertEqual(s.accumulationSeconds, 123.457, accuracy: 1e-9)
        XCTAssertEqual(s.realTimeMs, 1_000_000)
        XCTAssertEqual(s.realTimeSeconds, 1000, accuracy: 1e-9)
        XCTAssertEqual(s.firmwareVersion, "6.08.05")
        XCTAssertEqual(s.fpgaVersion, "6.12")
        XCTAssertEqual(s.serialNumber, 123_456)
        XCTAssertEqual(s.highVoltage, -260)
        XCTAssertEqual(s.detectorTemperatureK, 220, accuracy: 1e-9)
        XCTAssertEqual(s.boardTemperatureC, -30)
        XCTAssertTrue(s.presetTimeReached)
        XCTAssertTrue(s.mcaEnabled)
        XCTAssertTrue(s.configured)
        XCTAssertFalse(s.presetCountReached)
        XCTAssertFalse(s.autoFastThresholdLocked)
        XCTAssertFalse(s.gateOpen)
        XCTAssertTrue(s.firstSinceReboot)
        XCTAssertTrue(s.fpgaClock80MHz)
        XCTAssertTrue(s.fpgaClockAuto)
        XCTAssertTrue(s.pc5Detected)
        XCTAssertFalse(s.hvPositive)
        XCTAssertEqual(s.deviceType, 0)
        XCTAssertEqual(s.modelName, "Amptek DP5 + PC5 (X-123SDD)")
        XCTAssertEqual(s.deadTimePercent, 100 * (1 - 123_456.0 / 16_909_060), accuracy: 1e-9)
    }

    func testStatus_modelFollowsTheDeviceTypeAndPC5() throws {
        var v = Self.statusVector
        v[39] = 1
        XCTAssertEqual(AmptekStatus(v)?.modelName, "Amptek PX5")
        v[39] = 3
        XCTAssertEqual(AmptekStatus(v)?.modelName, "Amptek MCA8000D")
        v[39] = 0
        v[38] = 0xC0
        XCTAssertEqual(AmptekStatus(v)?.modelName, "Amptek DP5 + PC5 (X-123, Si-PIN or CdTe)")
        v[38] = 0
        XCTAssertEqual(AmptekStatus(v)?.modelName, "Amptek DP5")
        XCTAssertNil(AmptekStatus(Array(v.prefix(63))))
        let idle = try XCTUnwrap(AmptekStatus([UInt8](repeating: 0, count: 64)))
        XCTAssertEqual(idle.deadTimePercent, 0)
        XCTAssertFalse(idle.mcaEnabled)
    }

    func testSpectrumLayouts_coverAllTwelvePacketIDs() {
        let expected: [(UInt8, Int, Bool)] = [
            (1, 256, false), (2, 256, true), (3, 512, false), (4, 512, true), (5, 1024, false), (6, 1024, true),
            (7, 2048, false), (8, 2048, true), (9, 4096, false), (0x0A, 4096, true), (0x0B, 8192, false), (0x0C, 8192, true),
        ]
        for (pid2, n, s) in expected {
            XCTAssertEqual(AmptekSpectrum.layout(pid2: pid2)?.channels, n)
            XCTAssertEqual(AmptekSpectrum.layout(pid2: pid2)?.withStatus, s)
            XCTAssertEqual(AmptekSpectrum.pid2(channels: n, withStatus: s), pid2)
        }
        XCTAssertNil(AmptekSpectrum.layout(pid2: 0))
        XCTAssertNil(AmptekSpectrum.layout(pid2: 0x0D))
        // LEN values from the guide's table 2: 256 channels 0x0300 (+0x40 with status), 8192 0x6000.
        XCTAssertEqual(AmptekSpectrum.dataLength(channels: 256, withStatus: false), 0x0300)
        XCTAssertEqual(AmptekSpectrum.dataLength(channels: 256, withStatus: true), 0x0340)
        XCTAssertEqual(AmptekSpectrum.dataLength(channels: 8192, withStatus: true), 0x6040)
    }

    private func encode(_ counts: [UInt32]) -> [UInt8] {
        counts.flatMap { [UInt8($0 & 0xFF), UInt8(($0 >> 8) & 0xFF), UInt8($0 >> 16)] }
    }

    func testSpectrum256_withoutStatus_isThreeBytesPerChannelLeastSignificantFirst() throws {
        let counts = (0..<256).map { UInt32($0 * 65_793 % 16_777_216) }  // values over 16 bits
        var data = encode(counts)
        XCTAssertEqual(Array(data[3..<6]), [0x01, 0x01, 0x01], "channel 1 = 65793 = 0x010101")
        let r = try XCTUnwrap(AmptekSpectrum.decode(pid2: 0x01, data: data))
        XCTAssertEqual(r.counts, counts)
        XCTAssertNil(r.status)
        data.append(0)
        XCTAssertNil(AmptekSpectrum.decode(pid2: 0x01, data: data), "a length that does not fit the PID is refused")
    }

    func testSpectrum8192_withStatus_decodesCountsAndTheTrailingStatus() throws {
        let counts = (0..<8192).map { UInt32(($0 * 2053 + 7) % 16_777_216) }
        let data = encode(counts) + Self.statusVector
        let r = try XCTUnwrap(AmptekSpectrum.decode(pid2: 0x0C, data: data))
        XCTAssertEqual(r.counts.count, 8192)
        XCTAssertEqual(r.counts, counts)
        XCTAssertEqual(r.status, AmptekStatus(Self.statusVector))
        XCTAssertNil(AmptekSpectrum.decode(pid2: 0x0B, data: data), "81 0B has no status")
        // Through the framer, as a packet.
        let found = frame([AmptekPacket.encode(AmptekPacketID(0x81, 0x0C), data: data)])
        XCTAssertEqual(found.first?.packet?.1, data)
    }
}
