import NanonisDriver
import OperandoCore
import XCTest

/// Level 1: the driver's codec against byte vectors from the public sources (the worked examples
/// in TCPProtocol_SPM.pdf, "Examples", and shared/protocols/nanonis-tcp.md), every type's round
/// trip, framing at every read boundary, every error-reply form and malformed headers.
final class NanonisProtocolTests: XCTestCase {
    // MARK: Vectors

    func testRequest_biasSetHalfVolt_matchesTheSpecBytes() throws {
        var body = NanonisBodyWriter()
        body.float32(0.5)
        let bytes = try NanonisProtocol.request("Bias.Set", body: body.bytes)
        XCTAssertEqual(bytes, Array("Bias.Set".utf8) + [UInt8](repeating: 0, count: 24) + hexBytes("0000 0004 0001 0000 3F00 0000"))
    }

    func testRequest_folMeXYPosGet_matchesThePDFExample() throws {
        var body = NanonisBodyWriter()
        body.uint32(1)
        let expected = hexBytes("466F 6C4D 652E 5859 506F 7347 6574 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0004 0001 0000 0000 0001")
        XCTAssertEqual(try NanonisProtocol.request("FolMe.XYPosGet", body: body.bytes), expected)
    }

    func testRequest_folMeXYPosSet_matchesThePDFExample() throws {
        var body = NanonisBodyWriter()
        body.float64(10e-9)
        body.float64(15e-9)
        body.uint32(1)
        let expected = hexBytes("466F 6C4D 652E 5859 506F 7353 6574 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0014 0001 0000 3E45 798E E230 8C3A 3E50 1B2B 29A4 692B 0000 0001")
        XCTAssertEqual(try NanonisProtocol.request("FolMe.XYPosSet", body: body.bytes), expected)
    }

    /// The PDF's FolMe.XYPosGet response: X = 5 nm, Y = −5 nm (float64), no error.
    static let xyPosGetResponse = hexBytes("466F 6C4D 652E 5859 506F 7347 6574 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0018 0000 0000 3E35 798E E230 8C3A BE35 798E E230 8C3A 0000 0000 0000 0000")
    /// The PDF's FolMe.XYPosSet response: the error part only, no error.
    static let xyPosSetResponse = hexBytes("466F 6C4D 652E 5859 506F 7353 6574 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0008 0000 0000 0000 0000 0000 0000")

    func testResponse_folMeXYPosGet_decodesThePDFExample() throws {
        var assembler = NanonisResponseAssembler()
        Self.xyPosGetResponse.withUnsafeBytes { assembler.append($0) }
        let reply = try XCTUnwrap(try assembler.next())
        XCTAssertEqual(reply.header, NanonisProtocol.ResponseHeader(command: "FolMe.XYPosGet", bodySize: 24))
        let xy = try NanonisProtocol.decodeReply(reply.body, command: "FolMe.XYPosGet", device: "afm") { (r) throws(NanonisWireError) in (try r.float64(), try r.float64()) }
        XCTAssertEqual(xy.0, 5e-9, accuracy: 1e-22)
        XCTAssertEqual(xy.1, -5e-9, accuracy: 1e-22)
        XCTAssertNil(try assembler.next())
        XCTAssertEqual(assembler.buffered, 0)
    }

    func testResponse_errorPartOnly_decodesAsSuccess() throws {
        var assembler = NanonisResponseAssembler()
        Self.xyPosSetResponse.withUnsafeBytes { assembler.append($0) }
        let reply = try XCTUnwrap(try assembler.next())
        XCTAssertEqual(reply.header.bodySize, 8)
        try NanonisProtocol.decodeReply(reply.body, command: "FolMe.XYPosSet", device: "afm") { (_) throws(NanonisWireError) in () }
    }

    // MARK: Round trips

    func testEveryType_roundTripsThroughWriterAndReader() throws {
        var w = NanonisBodyWriter()
        w.int32(-123_456)
        w.uint16(0xBEEF)
        w.uint32(0xDEAD_BEEF)
        w.float32(-1.5e-9)
        w.float64(3.141592653589793)
        w.string("Z (m)")
        w.string("")
        w.int32Array([30, 0, -7])
        w.int32Array([5, 6], count: false)
        w.uint32Array([1, 0xFFFF_FFFF])
        w.float32Array([1, .infinity, -0.0])
        w.float64Array([2e-300, -1])
        w.stringArray(["Current (A)", "", "Bias (V)"])
        w.stringArray([])
        w.float32Matrix(rows: 2, columns: 3, [1, 2, 3, 4, 5, .nan])
        var r = NanonisBodyReader(w.bytes)
        XCTAssertEqual(try r.int32(), -123_456)
        XCTAssertEqual(try r.uint16(), 0xBEEF)
        XCTAssertEqual(try r.uint32(), 0xDEAD_BEEF)
        XCTAssertEqual(try r.float32(), -1.5e-9)
        XCTAssertEqual(try r.float64(), 3.141592653589793)
        XCTAssertEqual(try r.string(), "Z (m)")
        XCTAssertEqual(try r.string(), "")
        XCTAssertEqual(try r.int32Array(count: r.count("n", limit: 10)), [30, 0, -7])
        XCTAssertEqual(try r.int32Array(count: 2), [5, 6])
        XCTAssertEqual(try r.uint32Array(count: r.count("n", limit: 10)), [1, 0xFFFF_FFFF])
        let floats = try r.float32Array(count: r.count("n", limit: 10))
        XCTAssertEqual(floats[0], 1)
        XCTAssertEqual(floats[1], .infinity)
        XCTAssertEqual(floats[2].sign, .minus)
        XCTAssertEqual(try r.float64Array(count: r.count("n", limit: 10)), [2e-300, -1])
        XCTAssertEqual(try r.stringArray(), ["Current (A)", "", "Bias (V)"])
        XCTAssertEqual(try r.stringArray(), [])
        var matrix = [Float](repeating: 0, count: 6)
        let shape = try matrix.withUnsafeMutableBufferPointer { try r.float32Matrix(into: $0) }
        XCTAssertTrue(shape == (2, 3))
        XCTAssertEqual(Array(matrix[0..<5]), [1, 2, 3, 4, 5])
        XCTAssertTrue(matrix[5].isNaN)
        XCTAssertTrue(r.atEnd)
    }

    func testStringArray_bytesMatchTheFormTheOfficialClientSkips() {
        // size in bytes includes each element's 4-byte prefix: 4+1 + 4+2 = 11.
        var w = NanonisBodyWriter()
        w.stringArray(["a", "bc"])
        XCTAssertEqual(w.bytes, hexBytes("0000000B 00000002 00000001 61 00000002 6263"))
    }

    func testReader_shortOrInconsistentBodies_throwInsteadOfCrashing() {
        var r = NanonisBodyReader([0, 0, 0])
        XCTAssertThrowsError(try r.int32())
        var s = NanonisBodyReader(hexBytes("0000 0010 6162"))  // a 16-byte string with 2 bytes
        XCTAssertThrowsError(try s.string())
        var a = NanonisBodyReader(hexBytes("7FFF FFFF 0000 0001"))
        XCTAssertThrowsError(try a.stringArray())
        var m = NanonisBodyReader(hexBytes("0001 0000 0001 0000"))  // 65536 × 65536
        var storage = [Float](repeating: 0, count: 4)
        XCTAssertThrowsError(try storage.withUnsafeMutableBufferPointer { try m.float32Matrix(into: $0) })
        var lying = NanonisBodyReader(hexBytes("0000 0009 0000 0002 0000 0001 61 0000 0002 6263"))  // size says 9, elements take 11
        XCTAssertThrowsError(try lying.stringArray()) { XCTAssertTrue("\($0)".contains("announces 9 bytes"), "\($0)") }
    }

    // MARK: Framing

    func testFraming_oneByteAtATime_givesEachResponseOnceComplete() throws {
        var assembler = NanonisResponseAssembler()
        let stream = Self.xyPosGetResponse + Self.xyPosSetResponse
        var names: [String] = []
        for (i, byte) in stream.enumerated() {
            [byte].withUnsafeBytes { assembler.append($0) }
            while let reply = try assembler.next() {
                names.append(reply.header.command)
                XCTAssertTrue(i == Self.xyPosGetResponse.count - 1 || i == stream.count - 1, "a response completed at byte \(i)")
            }
        }
        XCTAssertEqual(names, ["FolMe.XYPosGet", "FolMe.XYPosSet"])
    }

    func testFraming_allAtOnceAndAtEverySplit_givesTheSameResponses() throws {
        let stream = Self.xyPosGetResponse + Self.xyPosSetResponse + Self.xyPosGetResponse
        for split in 0...stream.count {
            var assembler = NanonisResponseAssembler()
            var bodies: [[UInt8]] = []
            for part in [stream[0..<split], stream[split...]] {
                Array(part).withUnsafeBytes { assembler.append($0) }
                while let reply = try assembler.next() { bodies.append(Array(reply.body)) }
            }
            XCTAssertEqual(bodies.count, 3, "split at \(split)")
            XCTAssertEqual(bodies[0], Array(Self.xyPosGetResponse[40...]))
            XCTAssertEqual(bodies[1], Array(repeating: 0, count: 8))
        }
    }

    // MARK: Errors

    private func reply(values: [UInt8], status: UInt32, description: String) -> [UInt8] {
        var w = NanonisBodyWriter()
        w.uint32(status)
        w.string(description)
        return values + w.bytes
    }

    private func decodeBiasGet(_ body: [UInt8]) throws -> Float {
        try NanonisProtocol.decodeReply(body[...], command: "Bias.Get", device: "afm") { (r) throws(NanonisWireError) in try r.float32() }
    }

    func testErrorReply_withValuesThenStatusAndDescription_isRejectedNamingTheCommand() {
        XCTAssertThrowsError(try decodeBiasGet(reply(values: hexBytes("3F00 0000"), status: 1, description: "Bias out of range"))) { error in
            let e = error as? InstrumentError
            XCTAssertEqual(e?.code, .rejected)
            XCTAssertEqual(e?.device, "afm")
            XCTAssertTrue("\(error)".contains("Bias.Get") && "\(error)".contains("Bias out of range") && "\(error)".contains("status 1"), "\(error)")
        }
    }

    func testErrorReply_errorPartAlone_isRejected() {
        XCTAssertThrowsError(try decodeBiasGet(reply(values: [], status: 1, description: "Unknown command"))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .rejected)
            XCTAssertTrue("\(error)".contains("Unknown command"), "\(error)")
        }
    }

    func testErrorReply_zeroStatusWithADescription_isRejected() {
        XCTAssertThrowsError(try decodeBiasGet(reply(values: hexBytes("3F00 0000"), status: 0, description: "Warning: module not open"))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .rejected)
            XCTAssertTrue("\(error)".contains("module not open"), "\(error)")
        }
    }

    func testErrorReply_statusWithoutDescription_isRejected() {
        XCTAssertThrowsError(try decodeBiasGet(reply(values: hexBytes("3F00 0000"), status: 7, description: ""))) { error in
            XCTAssertEqual((error as? InstrumentError)?.code, .rejected)
            XCTAssertTrue("\(error)".contains("no description") && "\(error)".contains("status 7"), "\(error)")
        }
    }

    func testReply_withoutErrorPartOrWithAWrongDescriptionSize_isAProtocolViolation() {
        for body in [hexBytes("3F00 0000"), hexBytes("3F00 0000 0000 0000 0000 0005 6162"), hexBytes("3F00 0000 0000 0000 0000 0000 FF"), []] {
            XCTAssertThrowsError(try decodeBiasGet(body)) { error in
                XCTAssertEqual((error as? InstrumentError)?.code, .protocolViolation, "\(body): \(error)")
                XCTAssertTrue("\(error)".contains("Bias.Get"), "\(error)")
            }
        }
        XCTAssertEqual(try decodeBiasGet(reply(values: hexBytes("3F00 0000"), status: 0, description: "")), 0.5)
    }

    func testMalformedHeaders_areClearErrors() {
        var badName = Self.xyPosSetResponse
        badName[3] = 0xFF
        var gap = Self.xyPosSetResponse
        gap[20] = 0x41  // a character after the NUL padding began
        var absurd = Self.xyPosSetResponse
        absurd.replaceSubrange(32..<36, with: [0x7F, 0xFF, 0xFF, 0xFF])
        var negative = Self.xyPosSetResponse
        negative.replaceSubrange(32..<36, with: [0xFF, 0xFF, 0xFF, 0xF0])
        let empty = [UInt8](repeating: 0, count: 48)
        for (label, bytes, expected) in [("bad name", badName, "name field"), ("gap", gap, "name field"), ("absurd", absurd, "body size"), ("negative", negative, "body size"), ("empty", empty, "name field")] {
            var assembler = NanonisResponseAssembler()
            bytes.withUnsafeBytes { assembler.append($0) }
            XCTAssertThrowsError(try assembler.next(), label) { XCTAssertTrue("\($0)".contains(expected), "\(label): \($0)") }
        }
    }

    func testRequest_badCommandNames_areRefused() {
        XCTAssertThrowsError(try NanonisProtocol.request(""))
        XCTAssertThrowsError(try NanonisProtocol.request(String(repeating: "A", count: 33)))
        XCTAssertThrowsError(try NanonisProtocol.request("Bias Set"))
        XCTAssertEqual(try NanonisProtocol.request(String(repeating: "A", count: 32)).count, 40)
    }
}
