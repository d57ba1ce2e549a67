import XCTest

@testable import ZaberDriver

final class ZaberProtocolTests: XCTestCase {
    func testChecksum_zprotoVector_is143() {
        XCTAssertEqual(ZaberProtocol.checksum(Array("01 tools echo".utf8)), 143)
    }

    /// zaber-motion's own request for a position, as captured in the protocol notes.
    func testCommand_withIdAndChecksum_matchesTheOfficialClientsBytes() {
        XCTAssertEqual(String(decoding: ZaberProtocol.command(device: 1, axis: 1, id: 0, "get pos"), as: UTF8.self), "/1 1 00 get pos:2C\n")
        XCTAssertEqual(String(decoding: ZaberProtocol.command(device: 1, axis: 0, id: 12, "home"), as: UTF8.self).prefix(13), "/1 0 12 home:")
    }

    func testParse_replyWithoutId() throws {
        XCTAssertEqual(try ZaberProtocol.parse(Array("@01 2 OK IDLE -- 1.2 3.4".utf8)),
                       .reply(.init(device: 1, axis: 2, id: nil, accepted: true, busy: false, warning: "--", data: "1.2 3.4", continues: false)))
    }

    func testParse_rejectionWithId() throws {
        XCTAssertEqual(try ZaberProtocol.parse(Array("@01 1 12 RJ IDLE -- BADCOMMAND".utf8)),
                       .reply(.init(device: 1, axis: 1, id: 12, accepted: false, busy: false, warning: "--", data: "BADCOMMAND", continues: false)))
    }

    func testParse_busyWithWarningAndChecksum() throws {
        let body = "02 0 07 OK BUSY WR 1000"
        let line = "@" + body + ":" + ZaberProtocol.hex(ZaberProtocol.checksum(Array(body.utf8)))
        XCTAssertEqual(try ZaberProtocol.parse(Array(line.utf8)),
                       .reply(.init(device: 2, axis: 0, id: 7, accepted: true, busy: true, warning: "WR", data: "1000", continues: false)))
    }

    func testParse_badChecksum_isRejected() {
        XCTAssertThrowsError(try ZaberProtocol.parse(Array("@01 0 OK IDLE -- 0:00".utf8))) { error in
            XCTAssertTrue("\(error)".contains("checksum mismatch"), "\(error)")
        }
    }

    func testParse_infoAlertAndContinuation() throws {
        XCTAssertEqual(try ZaberProtocol.parse(Array("#01 2 info message".utf8)), .info(.init(device: 1, axis: 2, id: nil, text: "info message")))
        XCTAssertEqual(try ZaberProtocol.parse(Array("#01 0 05 cont 4 5 6".utf8)), .info(.init(device: 1, axis: 0, id: 5, text: "cont 4 5 6")))
        XCTAssertEqual(try ZaberProtocol.parse(Array("!01 1 IDLE --".utf8)), .alert(.init(device: 1, axis: 1, busy: false, warning: "--", data: "")))
        XCTAssertEqual(try ZaberProtocol.parse(Array("@01 0 05 OK IDLE -- 1 2 3\\".utf8)),
                       .reply(.init(device: 1, axis: 0, id: 5, accepted: true, busy: false, warning: "--", data: "1 2 3", continues: true)))
    }

    func testParse_garbage_isAnErrorNotACrash() {
        for junk in ["", "hello", "@", "@xx 1 OK IDLE --", "@01 1 MAYBE IDLE --", "!01 1", "\u{0}\u{ff}"] {
            XCTAssertThrowsError(try ZaberProtocol.parse(Array(junk.utf8)), junk)
        }
    }

    func testAssembler_dripFed_yieldsTheSameLines() {
        let stream = Array("@01 0 01 OK IDLE -- 0\r\n!01 1 IDLE --\r\n#01 0 02 cont x\n\r\n".utf8)
        func lines(chunk: Int) -> [String] {
            var a = ZaberLineAssembler()
            var out: [String] = []
            var i = 0
            while i < stream.count {
                let end = min(stream.count, i + chunk)
                stream[i..<end].withUnsafeBytes { a.feed($0) { out.append(String(decoding: $0, as: UTF8.self)) } }
                i = end
            }
            return out
        }
        let whole = lines(chunk: stream.count)
        XCTAssertEqual(whole, ["@01 0 01 OK IDLE -- 0", "!01 1 IDLE --", "#01 0 02 cont x"])
        for chunk in [1, 2, 3, 7] { XCTAssertEqual(lines(chunk: chunk), whole, "chunk \(chunk)") }
    }
}
