import NanonisDriver
import NanonisSimulator
import OperandoCore
import OperandoVirtualCell
import OperandoTestSupport
import XCTest

/// The simulator at the byte level, with a hand-moved clock: the spec's request bytes in, whole
/// responses out (checked byte for byte where the spec gives them, decoded with the driver's codec
/// otherwise, which was written apart from the simulator's).
final class NanonisSimulatorTests: XCTestCase {
    private let clock = ManualClock(startSeconds: 1)
    private lazy var simulator = NanonisSimulator(cell: VirtualCell(), clock: clock, seed: 5)

    private func request(_ name: String, _ build: (inout NanonisBodyWriter) -> Void = { _ in }) -> [UInt8] {
        var w = NanonisBodyWriter()
        build(&w)
        return try! NanonisProtocol.request(name, body: w.bytes)
    }

    /// Sends one request and splits what comes back into responses.
    private func exchange(_ bytes: [UInt8]) throws -> [(header: NanonisProtocol.ResponseHeader, body: [UInt8])] {
        try split(simulator.receive(bytes))
    }

    private func split(_ out: [UInt8]) throws -> [(header: NanonisProtocol.ResponseHeader, body: [UInt8])] {
        var assembler = NanonisResponseAssembler()
        out.withUnsafeBytes { assembler.append($0) }
        var replies: [(NanonisProtocol.ResponseHeader, [UInt8])] = []
        while let r = try assembler.next() { replies.append((r.header, Array(r.body))) }
        XCTAssertEqual(assembler.buffered, 0, "a partial response")
        return replies
    }

    private func call<T>(_ name: String, _ build: (inout NanonisBodyWriter) -> Void = { _ in }, _ decode: (inout NanonisBodyReader) throws(NanonisWireError) -> T) throws -> T {
        let replies = try exchange(request(name, build))
        XCTAssertEqual(replies.count, 1)
        XCTAssertEqual(replies.first?.header.command, name)
        return try NanonisProtocol.decodeReply(replies[0].body[...], command: name, device: "sim", decode)
    }

    func testBiasSet_specBytes_areAnsweredWithTheBareErrorPartThenReadBack() throws {
        let out = try simulator.receive(Array("Bias.Set".utf8) + [UInt8](repeating: 0, count: 24) + hexBytes("0000 0004 0001 0000 3F00 0000"))
        XCTAssertEqual(out, nameField("Bias.Set") + hexBytes("0000 0008 0000 0000 0000 0000 0000 0000"))
        XCTAssertEqual(simulator.currentBias, 0.5)
        let get = try simulator.receive(request("Bias.Get"))
        XCTAssertEqual(get, nameField("Bias.Get") + hexBytes("0000 000C 0000 0000 3F00 0000 0000 0000 0000 0000"))
    }

    func testRequestsDripFed_areAnsweredOnlyWhenComplete() throws {
        let bytes = request("Bias.Get") + request("Scan.StatusGet")
        var out: [UInt8] = []
        for (i, b) in bytes.enumerated() {
            let part = try simulator.receive([b])
            if !part.isEmpty { XCTAssertTrue(i == 39 || i == bytes.count - 1, "answered at byte \(i)") }
            out += part
        }
        XCTAssertEqual(try split(out).map(\.header.command), ["Bias.Get", "Scan.StatusGet"])
    }

    func testUnknownCommand_getsTheErrorPartAloneWithAStatus() throws {
        let replies = try exchange(request("Foo.Bar"))
        XCTAssertEqual(replies.first?.header.command, "Foo.Bar")
        var r = NanonisBodyReader(replies[0].body)
        let error = try r.errorTrailer()
        XCTAssertEqual(error.status, 1)
        XCTAssertTrue(error.description.contains("Foo.Bar"), error.description)
        XCTAssertThrowsError(try NanonisProtocol.decodeReply(replies[0].body[...], command: "Foo.Bar", device: "sim") { (_) throws(NanonisWireError) in () }) {
            XCTAssertEqual(($0 as? InstrumentError)?.code, .rejected)
        }
    }

    func testBadArguments_getZeroedValuesAndAnError_andChangeNothing() throws {
        // Too short, too long, out of range: each refused, naming the function.
        let short = try exchange(Array("Bias.Set".utf8) + [UInt8](repeating: 0, count: 24) + hexBytes("0000 0002 0001 0000 3F00"))
        let long = try exchange(request("Bias.Get") { $0.uint32(1) })
        let range = try exchange(request("Bias.Set") { $0.float32(25) })
        for (label, reply) in [("short", short), ("long", long), ("range", range)] {
            XCTAssertThrowsError(
                try NanonisProtocol.decodeReply(reply[0].body[...], command: reply[0].header.command, device: "sim") { (r) throws(NanonisWireError) in
                    if label == "long" { _ = try r.float32() }
                }, label
            ) { error in
                XCTAssertEqual((error as? InstrumentError)?.code, .rejected, label)
                XCTAssertTrue("\(error)".contains(reply[0].header.command), "\(error)")
            }
        }
        // Bias.Get's refusal still carries its float32 (zero) before the error part.
        XCTAssertEqual(long[0].body.prefix(4), [0, 0, 0, 0])
        XCTAssertEqual(simulator.currentBias, 0.2)
        XCTAssertThrowsError(try call("Scan.FrameDataGrab", { $0.uint32(99); $0.uint32(1) }) { (_) throws(NanonisWireError) in () }) {
            XCTAssertTrue("\($0)".contains("not one of the acquired channels"), "\($0)")
        }
        XCTAssertThrowsError(try call("Scan.Action", { $0.uint16(9); $0.uint32(0) }) { (_) throws(NanonisWireError) in () })
        XCTAssertThrowsError(try call("Scan.SpeedSet", { w in for _ in 0..<4 { w.float32(-1) }; w.uint16(1); w.float32(1) }) { (_) throws(NanonisWireError) in () })
    }

    func testNoResponseFlag_executesWithoutAnswering() throws {
        var w = NanonisBodyWriter()
        w.float32(-1.25)
        XCTAssertEqual(try simulator.receive(NanonisProtocol.request("Bias.Set", body: w.bytes, sendResponse: false)), [])
        XCTAssertEqual(simulator.currentBias, -1.25)
    }

    func testAbsurdRequestBodySize_endsTheConnection() {
        XCTAssertThrowsError(try simulator.receive(nameField("Bias.Get") + hexBytes("7FFF FFFF 0001 0000")))
    }

    func testSignals_namesAndValues() throws {
        let names = try call("Signals.NamesGet") { (r) throws(NanonisWireError) in try r.stringArray() }
        XCTAssertEqual(names.count, 128)
        XCTAssertEqual(names[0], "Current (A)")
        XCTAssertEqual(names[24], "Bias (V)")
        XCTAssertEqual(names[30], "Z (m)")
        let values = try call("Signals.ValsGet", { $0.int32Array([24, 30, 0]); $0.uint32(0) }) { (r) throws(NanonisWireError) in
            try r.float32Array(count: r.count("n", limit: 128))
        }
        XCTAssertEqual(values.count, 3)
        XCTAssertEqual(values[0], 0.2)
        XCTAssertTrue(values[1].isFinite && values[2].isFinite)
    }

    func testScan_fillsLinesInRealTime_unscannedLinesNaN_andReportsEachPassEnd() throws {
        // 16 pixels × 4 lines over 1 µm at 10 µm/s: 0.1 s per pass, 0.1 s to reach the start.
        try call("Scan.BufferSet", { $0.int32Array([30, 0]); $0.int32(16); $0.int32(4) }) { (_) throws(NanonisWireError) in () }
        try call("Scan.FrameSet", { for v: Float in [0, 0, 1e-6, 0.25e-6, 0] { $0.float32(v) } }) { (_) throws(NanonisWireError) in () }
        try call("Scan.SpeedSet", { w in w.float32(1e-5); w.float32(1e-5); w.float32(0.1); w.float32(0.1); w.uint16(1); w.float32(1) }) { (_) throws(NanonisWireError) in () }
        try call("Scan.PropsSet", { w in w.uint32(2); w.uint32(0); w.uint32(0); w.string(""); w.string(""); w.stringArray([]); w.uint32(0) }) { (_) throws(NanonisWireError) in () }
        try call("Scan.Action", { $0.uint16(0); $0.uint32(0) }) { (_) throws(NanonisWireError) in () }  // down: row 0 first
        XCTAssertEqual(try call("Scan.StatusGet") { (r) throws(NanonisWireError) in try r.uint32() }, 1)

        // A wait is held until the scan reaches the start point, then the first line's forward pass.
        XCTAssertEqual(try simulator.receive(request("Scan.WaitEndOfLine") { $0.int32(5000) }), [])
        clock.advance(seconds: 0.1001)
        var report = try split(simulator.poll())
        XCTAssertEqual(report.count, 1)
        var r = NanonisBodyReader(report[0].body)
        XCTAssertEqual([Int(try r.uint32()), Int(try r.int32()), Int(try r.uint16())], [0, 0, 3], "arrived at the start point")
        XCTAssertEqual(try simulator.receive(request("Scan.WaitEndOfLine") { $0.int32(5000) }), [])
        clock.advance(seconds: 0.05)  // half the forward pass: 8 pixels in packets of 16 → none yet
        XCTAssertEqual(simulator.poll(), [])
        clock.advance(seconds: 0.0501)
        report = try split(simulator.poll())
        r = NanonisBodyReader(report[0].body)
        XCTAssertEqual([Int(try r.uint32()), Int(try r.int32()), Int(try r.uint16()), Int(try r.int32())], [0, 0, 0, 1], "line 0 forward")
        clock.advance(seconds: 0.1)
        let grab = try call("Scan.FrameDataGrab", { $0.uint32(30); $0.uint32(1) }) { (r) throws(NanonisWireError) in
            let name = try r.string()
            let rows = Int(try r.int32()), columns = Int(try r.int32())
            let data = try r.float32Array(count: rows * columns)
            return (name, rows, columns, data, try r.uint32())
        }
        XCTAssertEqual(grab.0, "Z (m)")
        XCTAssertEqual(grab.1, 4)
        XCTAssertEqual(grab.2, 16)
        XCTAssertEqual(grab.4, 0, "scanning down")
        XCTAssertTrue(grab.3[0..<16].allSatisfy(\.isFinite), "line 0 is scanned")
        XCTAssertTrue(grab.3[16...].allSatisfy(\.isNaN), "the other lines are not")
        // A wait that times out says so.
        XCTAssertEqual(try simulator.receive(request("Scan.WaitEndOfLine") { $0.int32(10) }), [])
        clock.advance(seconds: 0.0101)
        report = try split(simulator.poll())
        r = NanonisBodyReader(report[0].body)
        XCTAssertEqual([Int(try r.uint32()), Int(try r.int32()), Int(try r.uint16())], [1, 0, 1], "timed out: line 1's forward pass ends 0.1 s later; the last end was line 0's backward pass")
        // Wait for the end of the scan (not continuous): 4 lines of 0.2 s.
        XCTAssertEqual(try simulator.receive(request("Scan.WaitEndOfScan") { $0.int32(-1) }), [])
        clock.advance(seconds: 1)
        report = try split(simulator.poll())
        XCTAssertEqual(report.first?.header.command, "Scan.WaitEndOfScan")
        let end = try NanonisProtocol.decodeReply(report[0].body[...], command: "Scan.WaitEndOfScan", device: "sim") { (r) throws(NanonisWireError) in
            (try r.uint32(), try r.string(byteCount: Int(try r.uint32())))
        }
        XCTAssertEqual(end.0, 0)
        XCTAssertEqual(end.1, "")
        XCTAssertEqual(try call("Scan.StatusGet") { (r) throws(NanonisWireError) in try r.uint32() }, 0)
        XCTAssertEqual(simulator.scanState.framesEnded, 1)
    }

    func testConfiguration_readsBackAsSet_withPixelsCoercedToMultiplesOf16() throws {
        try call("Scan.BufferSet", { $0.int32Array([0, 30]); $0.int32(70); $0.int32(0) }) { (_) throws(NanonisWireError) in () }
        let buffer = try call("Scan.BufferGet") { (r) throws(NanonisWireError) in
            (try r.int32Array(count: r.count("n", limit: 8)), try r.int32(), try r.int32())
        }
        XCTAssertEqual(buffer.0, [0, 30])
        XCTAssertEqual(buffer.1, 64)
        XCTAssertEqual(buffer.2, 64, "lines 0 keep the pixels' ratio")
        try call("Scan.SpeedSet", { w in w.float32(2e-6); w.float32(0); w.float32(0); w.float32(0); w.uint16(1); w.float32(2) }) { (_) throws(NanonisWireError) in () }
        let speed = try call("Scan.SpeedGet") { (r) throws(NanonisWireError) in
            (try r.float32(), try r.float32(), try r.float32(), try r.float32(), try r.uint16(), try r.float32())
        }
        XCTAssertEqual(speed.0, 2e-6)
        XCTAssertEqual(speed.1, 4e-6, "backward = forward × ratio")
        XCTAssertEqual(speed.2, 2.5, accuracy: 1e-6, "5 µm at 2 µm/s")
        XCTAssertEqual(speed.4, 0, "linear speed kept")
        try call("Scan.Action", { $0.uint16(0); $0.uint32(1) }) { (_) throws(NanonisWireError) in () }
        XCTAssertThrowsError(try call("Scan.BufferSet", { $0.int32Array([0]); $0.int32(16); $0.int32(16) }) { (_) throws(NanonisWireError) in () }) {
            XCTAssertTrue("\($0)".contains("while scanning"), "\($0)")
        }
        let version = try call("Util.VersionGet") { (r) throws(NanonisWireError) in (try r.string(), try r.string(), try r.uint32(), try r.uint32()) }
        XCTAssertEqual(version.0, "Nanonis SPM Control Software")
    }

    func testPropsGet_inTheOfficialClientsLayout() throws {
        let props = try call("Scan.PropsGet") { (r) throws(NanonisWireError) in
            let a = (try r.uint32(), try r.uint32(), try r.uint32(), try r.string(), try r.string())
            let modules = try r.stringArray()
            let perModule = try r.int32Array(count: r.count("n", limit: 8))
            let rows = try r.int32(), columns = try r.int32()
            return (a, modules, perModule, rows, columns, try r.uint32())
        }
        XCTAssertEqual(props.0.0, 1, "continuous by default")
        XCTAssertEqual(props.0.3, "operando")
        XCTAssertEqual(props.1, [])
        XCTAssertEqual(props.3, 0)
    }
}
