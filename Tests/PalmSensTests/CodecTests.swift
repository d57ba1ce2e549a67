import Foundation
@testable import PalmSensDriver
import XCTest

final class CodecTests: XCTestCase {
    private var package = MSPackage()

    private func decode(_ s: String) -> MSLine { MethodSCRIPTCodec.decode(s, into: &package) }

    func testGoldenPackage_fromTheProtocolDoc_decodesPotentialCurrentAndMetadata() {
        XCTAssertEqual(decode("Pda7F85F3Fu;ba48D503Dp,10,288"), .package)
        XCTAssertEqual(package.count, 2)
        XCTAssertEqual(package[0].type, MethodSCRIPTCodec.code("da"))
        XCTAssertEqual(package[0].raw, 0x7F85F3F - 0x800_0000)
        XCTAssertEqual(package[0].value, -0.499905, accuracy: 1e-12)
        XCTAssertEqual(package[1].type, MethodSCRIPTCodec.code("ba"))
        XCTAssertEqual(package[1].value, -57.847747e-6, accuracy: 1e-15)
        XCTAssertEqual(package[1].status, 0)
        XCTAssertEqual(package[1].rangeIndex, 0x88)
        XCTAssertEqual(package[0].rangeIndex, -1)
    }

    func testGoldenTranscript_decodesEveryLine() {
        let lines = ["e", "M0000", "Pda7F85F3Fu;ba48D503Dp,10,288", "*", ""]
        XCTAssertEqual(lines.map(decode), [.ack, .measurementLoopStart(0), .package, .measurementLoopEnd, .scriptFinished])
    }

    func testEverySIPrefix_scalesTheValue() {
        let prefixes: [(Character, Double)] = [("a", 1e-18), ("f", 1e-15), ("p", 1e-12), ("n", 1e-9), ("u", 1e-6), ("m", 1e-3), (" ", 1), ("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12), ("P", 1e15), ("E", 1e18), ("i", 1)]
        for (p, factor) in prefixes {
            XCTAssertEqual(decode("Pda8000005\(p)"), .package, "prefix \(p)")
            XCTAssertEqual(package[0].value, 5 * factor, accuracy: 5 * factor * 1e-12, "prefix \(p)")
        }
        XCTAssertEqual(decode("Pda8000005x"), .malformed(.badPrefix))
    }

    func testEveryVariableTypeInTheTable_decodesWithItsUnit() {
        for t in MethodSCRIPTCodec.variableTypes {
            XCTAssertEqual(decode("P\(t.code)8000001 "), .package, t.code)
            XCTAssertEqual(MethodSCRIPTCodec.variableType(package[0].type), t)
        }
        XCTAssertEqual(MethodSCRIPTCodec.variableType(MethodSCRIPTCodec.code("eb"))?.unit, "s")
        XCTAssertEqual(MethodSCRIPTCodec.variableType(MethodSCRIPTCodec.code("cc"))?.unit, "Ohm")
        XCTAssertEqual(MethodSCRIPTCodec.variableType(MethodSCRIPTCodec.code("dc"))?.unit, "Hz")
        // A type not in the table still decodes.
        XCTAssertEqual(decode("Pzz8000001 "), .package)
        XCTAssertNil(MethodSCRIPTCodec.variableType(package[0].type))
    }

    func testNegativeZeroAndExtremes() {
        XCTAssertEqual(decode("Pda0000000 ;ba8000000 ;ebFFFFFFF "), .package)
        XCTAssertEqual(package[0].value, -134_217_728)
        XCTAssertEqual(package[1].value, 0)
        XCTAssertEqual(package[2].value, 134_217_727)
    }

    func testNaN_isSpacesAndNan() {
        XCTAssertEqual(decode("Pda7F85F3Fu;ba     nan"), .package)
        XCTAssertTrue(package[1].value.isNaN)
        XCTAssertEqual(decode("Pba     nan,14"), .package)
        XCTAssertTrue(package[0].value.isNaN)
        XCTAssertEqual(package[0].status, 4)
    }

    func testMetadata_statusFlagsAndRange_inAnyOrder() {
        XCTAssertEqual(decode("Pba8000010n,1F,20B"), .package)
        XCTAssertEqual(package[0].status, 0xF)
        XCTAssertEqual(package[0].rangeIndex, 11)
        XCTAssertEqual(decode("Pba8000010n,203,12"), .package)
        XCTAssertEqual(package[0].status, 2)
        XCTAssertEqual(package[0].rangeIndex, 3)
        XCTAssertEqual(decode("Pba8000010n,"), .malformed(.badMetadata))
        XCTAssertEqual(decode("Pba8000010n,1G"), .malformed(.badMetadata))
        XCTAssertEqual(decode("Pba8000010nx"), .malformed(.badMetadata))
    }

    func testMarkers() {
        XCTAssertEqual(decode("L"), .loopStart)
        XCTAssertEqual(decode("+"), .loopEnd)
        XCTAssertEqual(decode("C0001"), .scanStart(1))
        XCTAssertEqual(decode("-"), .scanEnd)
        XCTAssertEqual(decode("M00aF"), .measurementLoopStart(0xAF))
        XCTAssertEqual(decode("M12"), .malformed(.badLoopMarker))
        XCTAssertEqual(decode("TSTEP 3 gcd-charge"), .text("STEP 3 gcd-charge"))
        XCTAssertEqual(decode("T"), .text(""))
    }

    func testErrorsAndAbortReplies() {
        XCTAssertEqual(decode("!4004"), .error(MSDeviceError(code: 0x4004)))
        guard case .error(let e) = decode("!4004: Line 12, Col 7") else { return XCTFail() }
        XCTAssertEqual(e.code, 0x4004)
        XCTAssertEqual(e.line, 12)
        XCTAssertEqual(e.column, 7)
        guard case .error(let e2) = decode("!0A1b: 3/9") else { return XCTFail() }
        XCTAssertEqual(e2.code, 0x0A1B)
        XCTAssertEqual(e2.line, 3)
        XCTAssertEqual(e2.column, 9)
        // Embedded after other text, as the public error pattern allows.
        guard case .error(let e3) = decode("e!0003") else { return XCTFail() }
        XCTAssertEqual(e3.code, 3)
        XCTAssertEqual(decode("Z"), .abortReply(error: nil))
        XCTAssertEqual(decode("Z!0006"), .abortReply(error: 6))
        XCTAssertTrue(MethodSCRIPTCodec.errorMeaning(6).contains("no script"))
        XCTAssertTrue(MethodSCRIPTCodec.errorMeaning(0x4321).contains("4321"))
        XCTAssertEqual(decode("!12"), .malformed(.unknownLine))
        XCTAssertEqual(decode("!1234x"), .malformed(.unknownLine))
    }

    func testReplies_andGarbage() {
        XCTAssertEqual(decode("tespico1.3"), .reply(letter: UInt8(ascii: "t"), text: "espico1.3"))
        XCTAssertEqual(decode("v0106"), .reply(letter: UInt8(ascii: "v"), text: "0106"))
        XCTAssertEqual(decode("\u{01}\u{02}"), .malformed(.unknownLine))
        XCTAssertEqual(decode("P"), .malformed(.emptyPackage))
        XCTAssertEqual(decode("Pda8000000u;"), .malformed(.emptyPackage))
        XCTAssertEqual(decode("Pda800"), .malformed(.variableTooShort))
        XCTAssertEqual(decode("PDA8000000u"), .malformed(.badTypeCode))
        XCTAssertEqual(decode("Pda80000G0u"), .malformed(.badHexDigit))
        let many = "P" + Array(repeating: "da8000000u", count: 17).joined(separator: ";")
        XCTAssertEqual(decode(many), .malformed(.tooManyVariables))
        // Random bytes never crash the decoder.
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<40, using: &rng)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if Bool.random(using: &rng), !bytes.isEmpty { bytes[0] = UInt8(ascii: "P") }
            _ = bytes.withUnsafeBufferPointer { MethodSCRIPTCodec.decode($0, into: &package) }
        }
    }

    func testFramer_byteByByteAndAllAtOnce_giveTheSameLines() {
        let transcript = "e\r\nM0000\nPda7F85F3Fu;ba48D503Dp,10,288\n*\n\n"
        func frame(_ chunks: [[UInt8]]) -> [MSLine] {
            var framer = MSLineFramer(capacity: 64)
            var out: [MSLine] = []
            var p = MSPackage()
            for chunk in chunks {
                for b in chunk where framer.push(b) == .line {
                    out.append(framer.withLine { MethodSCRIPTCodec.decode($0, into: &p) })
                }
            }
            return out
        }
        let bytes = Array(transcript.utf8)
        let expected: [MSLine] = [.ack, .measurementLoopStart(0), .package, .measurementLoopEnd, .scriptFinished]
        XCTAssertEqual(frame([bytes]), expected)
        XCTAssertEqual(frame(bytes.map { [$0] }), expected)
        XCTAssertEqual(frame([Array(bytes[0..<7]), Array(bytes[7..<30]), Array(bytes[30...])]), expected)
    }

    func testFramer_overlongLine_isReportedOnceAndFramingRecovers() {
        var framer = MSLineFramer(capacity: 8)
        var outputs: [MSLineFramer.Output] = []
        for b in Array("0123456789abc\ne\n".utf8) { if let o = framer.push(b) { outputs.append(o) } }
        XCTAssertEqual(outputs, [.overflow, .line])
        XCTAssertEqual(framer.withLine { String(decoding: $0, as: UTF8.self) }, "e")
    }

    func testNumberFormatting_integerMantissaWithSIPrefix() {
        let n = MethodSCRIPTGenerator.number
        XCTAssertEqual(n(0), "0")
        XCTAssertEqual(n(0.5), "500m")
        XCTAssertEqual(n(-0.5), "-500m")
        XCTAssertEqual(n(1e-6), "1u")
        XCTAssertEqual(n(100_000), "100k")
        XCTAssertEqual(n(4.2), "4200m")
        XCTAssertEqual(n(3), "3")
        XCTAssertEqual(n(0.00125), "1250u")
        XCTAssertEqual(n(-0.4999), "-499900u")
    }
}

/// The word-at-a-time hex decoder of package values agrees with the byte-by-byte one on every
/// kind of input: all hex digits (both cases), and each non-hex byte in each position.
final class CodecHexTests: XCTestCase {
    func testHex7_agreesWithTheScalarDecoder_onRandomAndInvalidInput() {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let hexDigits = Array("0123456789abcdefABCDEF".utf8)
        var bytes = [UInt8](repeating: 0, count: 8)
        for round in 0..<200_000 {
            for k in 0..<8 { bytes[k] = hexDigits[Int(next() % UInt64(hexDigits.count))] }
            bytes[7] = UInt8(truncatingIfNeeded: next())  // the SI prefix: anything
            if round % 2 == 1 {
                // One byte of the digits is anything at all (often not hex, sometimes ≥ 0x80).
                bytes[Int(next() % 7)] = UInt8(truncatingIfNeeded: next())
            }
            bytes.withUnsafeBufferPointer { b in
                XCTAssertEqual(MethodSCRIPTCodec.hex7(b.baseAddress!), MethodSCRIPTCodec.hex(b, 0, 7), "\(bytes)")
            }
        }
        // Every single byte value in every digit position.
        for position in 0..<7 {
            for value in 0...255 {
                var b = Array("7F85F3Fu".utf8)
                b[position] = UInt8(value)
                b.withUnsafeBufferPointer { p in
                    XCTAssertEqual(MethodSCRIPTCodec.hex7(p.baseAddress!), MethodSCRIPTCodec.hex(p, 0, 7), "byte \(value) at \(position)")
                }
            }
        }
    }
}
