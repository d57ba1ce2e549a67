import OperandoCore
import XCTest

@testable import OperandoControl

final class ProtocolTests: XCTestCase {
    private let stream = Array("{\"id\":1,\"cmd\":\"status\"}\n\r\n{\"id\":2,\"cmd\":\"mark\",\"args\":{\"text\":\"é ✓\"}}\r\n\n{\"cmd\":\"devices\"}\n".utf8)

    func testFramer_fedByteByByte_yieldsTheSameLinesAsAllAtOnce() {
        var whole = LineFramer()
        let expected = whole.feed(stream)
        XCTAssertEqual(expected.count, 3)
        for chunk in [1, 2, 3, 5, 7, 64] {
            var framer = LineFramer()
            var items: [LineFramer.Item] = []
            var i = 0
            while i < stream.count {
                items += framer.feed(stream[i..<min(stream.count, i + chunk)])
                i += chunk
            }
            XCTAssertEqual(items, expected, "chunk \(chunk)")
            XCTAssertEqual(framer.pendingBytes, 0)
        }
    }

    func testFramer_whenALineIsTooLong_reportsItOnceAndRecoversAtTheNextNewline() {
        var framer = LineFramer(maxLineBytes: 16)
        var items = framer.feed(Array(repeating: UInt8(ascii: "x"), count: 40))
        XCTAssertEqual(items, [])
        items = framer.feed(Array("yy\n{\"cmd\":\"a\"}\n".utf8))
        XCTAssertEqual(items, [.tooLong(42), .line(Array("{\"cmd\":\"a\"}".utf8))])
    }

    func testParse_validRequest_keepsIdCommandAndArguments() throws {
        let r = try parseRequest(Array(#"{"v":1,"id":"abc","cmd":"run.start","args":{"name":"x","meta":{"a":"b"}}}"#.utf8)).get()
        XCTAssertEqual(r.id, .string("abc"))
        XCTAssertEqual(r.cmd, "run.start")
        XCTAssertEqual(r.args?["name"], .string("x"))
    }

    func testParse_malformedRequests_getStructuredErrors() {
        let cases: [(String, ControlErrorCode, JSONValue?)] = [
            ("not json at all", .badJSON, nil),
            ("\u{1}\u{2}\u{ff}", .badJSON, nil),
            ("[1,2,3]", .badJSON, nil),
            (#"{"id":7}"#, .badRequest, .number(7)),
            (#"{"id":7,"cmd":42}"#, .badRequest, .number(7)),
            (#"{"id":7,"cmd":"status","args":[1]}"#, .badRequest, .number(7)),
            (#"{"v":99,"id":8,"cmd":"status"}"#, .unsupportedVersion, .number(8)),
        ]
        for (text, code, id) in cases {
            switch parseRequest(Array(text.utf8)) {
            case .success: XCTFail("accepted \(text)")
            case .failure(let rejection):
                XCTAssertEqual(rejection.error.code, code, text)
                XCTAssertEqual(rejection.id, id, text)
                XCTAssertFalse(rejection.error.message.isEmpty)
                let line = rejection.reply.encodedLine()
                XCTAssertEqual(line.last, 0x0A)
                XCTAssertEqual(line.filter { $0 == 0x0A }.count, 1, "a reply is exactly one line")
            }
        }
    }

    func testReply_roundTrips() throws {
        let reply = ControlReply.success(id: .number(3), .object(["a": .array([.number(1), .string("b"), .null, .bool(true)])]))
        let decoded = try JSONDecoder().decode(ControlReply.self, from: Data(reply.encodedLine().dropLast()))
        XCTAssertEqual(decoded.id, .number(3))
        XCTAssertTrue(decoded.ok)
        XCTAssertEqual(decoded.result, reply.result)
    }
}
