import AmptekDriver
import XCTest

/// Level 1: byte vectors from the DP5 Programmer's Guide (Rev A7) as collected in
/// protocols/amptek-dp5.md, and the rules of the packet format.
final class AmptekProtocolTests: XCTestCase {
    func testRequests_encodeByteExactlyAsTheProtocolTable() throws {
        XCTAssertEqual(AmptekRequest.status.encoded, hex("F5 FA 01 01 00 00 FE 0F"))
        XCTAssertEqual(AmptekRequest.spectrumStatus.encoded, hex("F5 FA 02 03 00 00 FE 0C"))
        XCTAssertEqual(AmptekRequest.spectrum.encoded, hex("F5 FA 02 01 00 00 FE 0E"))
        XCTAssertEqual(AmptekRequest.enableMCA.encoded, hex("F5 FA F0 02 00 00 FD 1F"))
        XCTAssertEqual(AmptekRequest.disableMCA.encoded, hex("F5 FA F0 03 00 00 FD 1E"))
        XCTAssertEqual(AmptekRequest.clearSpectrum.encoded, hex("F5 FA F0 01 00 00 FD 20"))
        let config = try AmptekRequest.textConfiguration("PRET=10.0;MCAC=1024;").encoded
        XCTAssertEqual(Array(config.prefix(6)), hex("F5 FA 20 02 00 14"))
        XCTAssertEqual(Array(config[6..<26]), Array("PRET=10.0;MCAC=1024;".utf8))
        XCTAssertEqual(Array(config.suffix(2)), hex("F9 16"))
        XCTAssertEqual(config.count, 28)
        let readback = try AmptekRequest.configurationReadback("MCAC;PRET;").encoded
        XCTAssertEqual(Array(readback.prefix(6)), hex("F5 FA 20 03 00 0A"))
        XCTAssertEqual(Array(readback[6..<16]), Array("MCAC;PRET;".utf8))
        XCTAssertEqual(Array(readback.suffix(2)), hex("FB 1F"))
        XCTAssertEqual(Array(try AmptekRequest.echo([0x41]).encoded.prefix(4)), hex("F5 FA F1 7F"))
        XCTAssertEqual(Array(AmptekRequest.keepAliveNoSharing.encoded.prefix(4)), hex("F5 FA F0 21"))
        XCTAssertEqual(Array(AmptekRequest.listData.encoded.prefix(4)), hex("F5 FA 03 09"))
    }

    /// PID1 = 2 asks for a spectrum; PID2 1 = spectrum, 2 = and clear, 3 = + status, 4 = + status
    /// and clear (packet.h of ckoern/amptekhardwareinterface, Programmer's Guide table 1).
    func testSpectrumStatusClear_isPID_02_04() {
        XCTAssertEqual(AmptekRequest.spectrumStatusClear.encoded, hex("F5 FA 02 04 00 00 FE 0B"))
        XCTAssertEqual(AmptekRequest.spectrumClear.encoded, hex("F5 FA 02 02 00 00 FE 0D"))
        XCTAssertEqual(AmptekRequest.spectrumStatusClear.expectedReply, .spectrum(withStatus: true))
        XCTAssertEqual(AmptekRequest.spectrumClear.expectedReply, .spectrum(withStatus: false))
    }

    func testChecksum_isTheTwosComplementOfTheByteSum_notAZeroSumOfThePacket() {
        let ok = AmptekPacket.encode(.ackOK)
        XCTAssertEqual(ok, hex("F5 FA FF 00 00 00 FD 12"))
        let sum = ok.prefix(6).reduce(0) { $0 + Int($1) }
        XCTAssertEqual(sum, 0x2EE)
        XCTAssertEqual((sum + 0xFD12) % 65536, 0, "byte sum + checksum read big-endian is 0 mod 65536")
        XCTAssertNotEqual(ok.reduce(0) { $0 + Int($1) } % 65536, 0, "the plain byte sum of the whole packet is not 0")
        // A long packet: the 16-bit sum wraps.
        let data = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let p = AmptekPacket.encode(AmptekPacketID(0x81, 0x06), data: data)
        let s = p.dropLast(2).reduce(UInt16(0)) { $0 &+ UInt16($1) }
        XCTAssertEqual(s &+ (UInt16(p[p.count - 2]) << 8 | UInt16(p[p.count - 1])), 0)
        XCTAssertEqual(Array(p[4...5]), [0x0B, 0xB8], "LEN is big-endian")
    }

    /// The ACK packets of Programmer's Guide 4.3, byte for byte.
    func testAckPackets_matchTheGuidesVectors() {
        let vectors: [(UInt8, String)] = [
            (0x00, "FD 12"), (0x01, "FD 11"), (0x02, "FD 10"), (0x03, "FD 0F"), (0x04, "FD 0E"), (0x06, "FD 0C"),
            (0x08, "FD 0A"), (0x09, "FD 09"), (0x0A, "FD 08"), (0x0C, "FD 06"), (0x0E, "FD 04"), (0x10, "FD 02"), (0x11, "FD 01"),
        ]
        for (code, check) in vectors {
            XCTAssertEqual(AmptekPacket.encode(AmptekPacketID(0xFF, code)), hex("F5 FA FF") + [code] + hex("00 00 \(check)"), "ACK \(code)")
        }
    }

    func testEveryAckCode_hasItsOwnNameMeaningAndAdvice() {
        var names = Set<String>()
        for code in AmptekAck.allCodes {
            let ack = AmptekAck(code: code)
            XCTAssertFalse(ack.name.hasPrefix("unknown"), "0x\(code)")
            names.insert(ack.name)
            XCTAssertFalse(ack.meaning.isEmpty)
            if !ack.isOK { XCTAssertFalse(ack.advice.isEmpty, "ACK \(code) says what to do") }
            XCTAssertTrue(ack.message.hasPrefix("ACK " + AmptekHex.byte(code)), ack.message)
        }
        XCTAssertEqual(names.count, AmptekAck.allCodes.count, "every code has a distinct name")
        XCTAssertEqual(AmptekAck.allCodes.count, 18, "00…11: the codes of the guide's table 3")
        XCTAssertTrue(AmptekAck(code: 0x00).isOK)
        XCTAssertTrue(AmptekAck(code: 0x0C).isOK, "OK with a sharing request is still OK")
        XCTAssertFalse(AmptekAck(code: 0x0D).isOK)
        // Messages that matter most, word for word.
        XCTAssertEqual(AmptekAck(code: 0x01).name, "sync error")
        XCTAssertEqual(AmptekAck(code: 0x02).name, "PID error")
        XCTAssertEqual(AmptekAck(code: 0x03).name, "LEN error")
        XCTAssertTrue(AmptekAck(code: 0x04).message.contains("checksum") && AmptekAck(code: 0x04).message.contains("115200"))
        XCTAssertTrue(AmptekAck(code: 0x0D).message.contains("another interface"))
        XCTAssertTrue(AmptekAck(code: 0x0D).advice.contains("DPPMCA"))
        XCTAssertTrue(AmptekAck(code: 0x08).message.contains("FPGA"))
        XCTAssertTrue(AmptekAck(code: 0x0A).message.contains("oscilloscope"))
        XCTAssertTrue(AmptekAck(code: 0x0B).message.contains("PC5"))
        XCTAssertTrue(AmptekAck(code: 0x0E).message.contains("I2C"))
        XCTAssertTrue(AmptekAck(code: 0x42).message.contains("does not define"))
    }

    func testTextConfigurationErrors_quoteTheCommandTheDeviceEchoed() {
        let bad = AmptekAck(code: 0x05, echoedCommand: "MCAC=1000;")
        XCTAssertTrue(bad.message.contains("\"MCAC=1000;\""), bad.message)
        XCTAssertTrue(bad.message.contains("bad parameter"))
        let unknown = hex("46 4F 4F 4F 3D 31 3B").withUnsafeBytes { AmptekAck(code: 0x07, data: $0) }
        XCTAssertEqual(unknown.echoedCommand, "FOOO=1;")
        XCTAssertTrue(unknown.message.contains("unrecognized command") && unknown.message.contains("FOOO=1;"), unknown.message)
        XCTAssertTrue(AmptekAck(code: 0x0B, echoedCommand: "HVSE=-100;").message.contains("HVSE=-100;"))
    }

    func testReplyKinds_followThePacketIDs() {
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x80, 0x01)), .status)
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x81, 0x01)), .spectrum(channels: 256, withStatus: false))
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x81, 0x08)), .spectrum(channels: 2048, withStatus: true))
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x81, 0x0C)), .spectrum(channels: 8192, withStatus: true))
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x81, 0x0D)), .unknown)
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x82, 0x07)), .configurationReadback)
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x82, 0x0B)), .listData(fifoFull: true))
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0x8F, 0x7F)), .echo)
        XCTAssertEqual(AmptekReplyKind(AmptekPacketID(0xFF, 0x05)), .ack(code: 5))
        XCTAssertTrue(AmptekReplyKind.spectrum(channels: 1024, withStatus: true).answers(.spectrum(withStatus: true)))
        XCTAssertFalse(AmptekReplyKind.spectrum(channels: 1024, withStatus: false).answers(.spectrum(withStatus: true)))
        XCTAssertFalse(AmptekReplyKind.ack(code: 7).answers(.ack))
        XCTAssertFalse(AmptekReplyKind.status.answers(.configurationReadback))
    }

    func testRequests_refuseWhatTheDeviceCannotTake() {
        XCTAssertThrowsError(try AmptekRequest.textConfiguration(""))
        XCTAssertThrowsError(try AmptekRequest.textConfiguration("TPEA=3.2; THSL=1;"), "no whitespace")
        XCTAssertThrowsError(try AmptekRequest.textConfiguration(String(repeating: "THSL=1.5;", count: 60)), "over 511 bytes")
        XCTAssertThrowsError(try AmptekRequest.echo([UInt8](repeating: 1, count: 600)))
    }

    func testTextConfig_parsesNormalisesAndRejectsMalformedCommands() throws {
        let c = try AmptekTextConfig.parse(" thsl=1.5; TPEA=3.2US;\n")
        XCTAssertEqual(c, [AmptekTextCommand("THSL", "1.5"), AmptekTextCommand("TPEA", "3.2US")])
        XCTAssertEqual(AmptekTextConfig.format(c), "THSL=1.5;TPEA=3.2US;")
        XCTAssertEqual(AmptekTextConfig.readbackTemplate([AmptekTextCommand("RESC", "Y"), AmptekTextCommand("SCAI", "2"), AmptekTextCommand("SCAL", "100")]), "SCAI=2;SCAL;")
        XCTAssertEqual(try AmptekTextConfig.parse("MCAC=1024;PRET=OFF;", requireValues: false).map(\.value), ["1024", "OFF"])
        XCTAssertThrowsError(try AmptekTextConfig.parse("THRESHOLD=1;"))
        XCTAssertThrowsError(try AmptekTextConfig.parse("THSL=12345678901;"), "over 10 characters")
        XCTAssertThrowsError(try AmptekTextConfig.parse("THSL;"), "a configuration needs values")
        XCTAssertThrowsError(try AmptekTextConfig.parse("THSL=1;;TPEA=2;"))
    }

    func testReadbackComparison_allowsTheDevicesRoundingAndAbbreviations() {
        XCTAssertTrue(AmptekTextConfig.valuesAgree(sent: "10.0", readBack: "10.0"))
        XCTAssertTrue(AmptekTextConfig.valuesAgree(sent: "3.2US", readBack: "3.200"))
        XCTAssertTrue(AmptekTextConfig.valuesAgree(sent: "20", readBack: "19.98"), "GAIN is approximated by coarse × fine gain")
        XCTAssertTrue(AmptekTextConfig.valuesAgree(sent: "OF", readBack: "OFF"))
        XCTAssertTrue(AmptekTextConfig.valuesAgree(sent: "0", readBack: "OFF"))
        XCTAssertTrue(AmptekTextConfig.valuesAgree(sent: "AU", readBack: "AUTO"))
        XCTAssertFalse(AmptekTextConfig.valuesAgree(sent: "2048", readBack: "1024"))
        XCTAssertFalse(AmptekTextConfig.valuesAgree(sent: "10.0", readBack: "OFF"))
        XCTAssertFalse(AmptekTextConfig.valuesAgree(sent: "1", readBack: "??"))
        XCTAssertEqual(AmptekTextConfig.fixed(10, decimals: 1), "10.0")
        XCTAssertEqual(AmptekTextConfig.fixed(1.25, decimals: 3), "1.250")
        XCTAssertEqual(AmptekTextConfig.fixed(-260, decimals: 0), "-260")
    }
}
