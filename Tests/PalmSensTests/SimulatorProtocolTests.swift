import Foundation
import OperandoVirtualCell
import PalmSensSimulator
import XCTest

/// Host commands, the script language and the output grammar, byte for byte.
final class SimulatorProtocolTests: XCTestCase {
    private var bench: PSSimBench!

    override func tearDown() {
        bench?.stop()
        bench = nil
        super.tearDown()
    }

    private func start(maxScriptBytes: Int = 16_384) -> PSSimBench {
        bench = PSSimBench(maxScriptBytes: maxScriptBytes)
        return bench
    }

    func testHostCommands_replyWithTheirTranscripts() {
        let b = start()
        b.send("t\n")
        XCTAssertEqual(b.line(), "tespico1.4")
        XCTAssertEqual(b.line(), "#Dec 15 2025 12:00:00*")
        b.send("v\n")
        XCTAssertEqual(b.line(), "v1.8")
        b.send("i\n")
        XCTAssertEqual(b.line(), "iPSSIM0001")
        b.send("Z\n")
        XCTAssertEqual(b.line(), "Z!0006")
        b.send("q\n")
        XCTAssertEqual(b.line(), "q!0001")
    }

    func testScript_withoutMeasurement_transcriptIsExact() {
        let b = start()
        let lines = b.run(
            """
            var a
            var n
            store_var a 5i ja
            store_var n 0i aa
            loop n < 3i
              pck_start
              pck_add n
              pck_add a
              pck_end
              add_var n 1i
            endloop
            if n == 2i
              send_string "two"
            elseif n == 3i
              send_string "three"
            else
              send_string "other"
            endif
            if n > 10i
              send_string "big"
            endif
            send_string f"n={n}"
            on_finished:
              cell_off
            """)
        XCTAssertEqual(
            lines,
            [
                "e", "L", "Paa8000000i;ja8000005i", "Paa8000001i;ja8000005i", "Paa8000002i;ja8000005i", "+",
                "Tthree", "Tn=3", "",
            ])
    }

    func testEncoding_matchesThePublicWorkedExamples() {
        let b = start()
        let lines = b.run(
            """
            var p
            var c
            store_var p -500m da
            store_var c -57847747p ba
            pck_start
            pck_add p
            pck_add c
            pck_end
            """)
        XCTAssertEqual(lines, ["e", "Pda7F85EE0u;ba48D503Dp", ""])
        let decoded = psSimDecodePackage(lines[1])!
        XCTAssertEqual(decoded[0].value, -0.5, accuracy: 1e-9)
        XCTAssertEqual(decoded[1].value, -57.847747e-6, accuracy: 1e-15)
    }

    func testBreakloop_leavesTheInnermostLoop() {
        let b = start()
        let lines = b.run(
            """
            var i
            store_var i 0i aa
            loop i < 100i
              add_var i 1i
              if i >= 2i
                breakloop
              endif
            endloop
            pck_start
            pck_add i
            pck_end
            """)
        XCTAssertEqual(lines, ["e", "L", "+", "Paa8000002i", ""])
    }

    func testErrors_reportCodeAndLine() {
        let b = start()
        XCTAssertEqual(b.run("var a\nfrobnicate a\n"), ["e", "!4001: Line 2, Col 1"])
        XCTAssertEqual(b.run("var a\nstore_var a 1\n"), ["e", "!4002: Line 2, Col 1"])
        XCTAssertEqual(b.run("var a\nstore_var a 1q ja\n"), ["e", "!4003: Line 2, Col 1"])
        XCTAssertEqual(b.run("set_e nothere\n"), ["e", "!4004: Line 1, Col 1"])
        XCTAssertEqual(b.run("var a\nendloop\n"), ["e", "!4005: Line 2, Col 1"])
        XCTAssertEqual(b.run("var a\nloop a < 1\n"), ["e", "!4005: Line 2, Col 1"])
        XCTAssertEqual(b.run("var a\nvar a\n"), ["e", "!4007: Line 2, Col 1"])
        XCTAssertEqual(b.run("var p\nvar c\nmeas_loop_ca p c 0 0 1\nendloop\n"), ["e", "!4008: Line 3, Col 1"])
        // The device still answers afterwards.
        b.send("v\n")
        XCTAssertEqual(b.line(), "v1.8")
    }

    func testScriptTooLong_isRefused() {
        let b = start(maxScriptBytes: 64)
        let script = (0..<10).map { "var v\($0)" }.joined(separator: "\n")
        XCTAssertEqual(b.run(script), ["e", "!4006"])
    }

    func testWait_holdsTheScriptUntilTheClockMoves() {
        let b = start()
        b.send("e\nsend_string \"a\"\nwait 2\nsend_string \"b\"\n\n")
        XCTAssertEqual(b.line(), "e")
        XCTAssertEqual(b.line(), "Ta")
        b.advance(seconds: 1.5)
        XCTAssertEqual(b.drain(), [])
        b.advance(seconds: 0.6)
        XCTAssertEqual(b.line(), "Tb")
        XCTAssertEqual(b.line(), "")
    }

    func testGPIO_outputsAndInputs() {
        let b = start()
        b.simulator.setGPIOInputs(0b0100)
        let lines = b.run(
            """
            var g
            set_gpio_cfg 0b0011 1
            set_gpio 0b0110
            get_gpio g
            pck_start
            pck_add g
            pck_end
            """)
        XCTAssertEqual(b.simulator.gpioOutputs, 0b0010)
        let g = psSimPackages(lines)[0][0]
        XCTAssertEqual(g.type, "ec")
        XCTAssertEqual(Int(g.value) & 0b0111, 0b0110)
    }

    func testAbort_midMeasurement_closesTheLoopAndRunsOnFinished() {
        let b = start()
        var packages = 0
        let lines = b.run(
            """
            var p
            var c
            set_range ba 5m
            set_e 3.6
            cell_on
            meas_loop_ca p c 3.6 100m 100
              pck_start
              pck_add c
              pck_end
            endloop
            on_finished:
              send_string "done"
              cell_off
            """, step: 0.1,
            onLine: { l, bench in
                if l.hasPrefix("P") { packages += 1 }
                if packages == 3 {
                    bench.send("Z\n")
                    return true
                }
                return false
            })
        XCTAssertEqual(Array(lines.prefix(2)), ["e", "M0000"])
        // After the abort: Z, the loop's end, on_finished's output, the end of the run.
        var rest = [b.line()]
        while rest.last != "", rest.last != "<none>", rest.count < 100 { rest.append(b.line()) }
        XCTAssertEqual(rest.first, "Z")
        XCTAssertEqual(rest.filter { !$0.hasPrefix("P") }, ["Z", "*", "Tdone", ""])
        XCTAssertFalse(b.simulator.isRunning)
        b.send("Z\n")
        XCTAssertEqual(b.line(), "Z!0006")
    }
}
