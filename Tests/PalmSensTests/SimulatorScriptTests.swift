import Foundation
import OperandoVirtualCell
import PalmSensSimulator
import XCTest

/// Whole scripts: the driver's generated fixtures and scripts in the public examples' syntax.
final class SimulatorScriptTests: XCTestCase {
    private var bench: PSSimBench!

    override func tearDown() {
        bench?.stop()
        bench = nil
        super.tearDown()
    }

    private static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    }

    /// Every MethodSCRIPT the driver generates runs to completion: `e`, balanced markers, decodable
    /// packages, no error, the empty line; measurement loops produce data.
    func testEveryDriverFixture_runsToCompletion() throws {
        let files = (try? FileManager.default.contentsOfDirectory(at: Self.fixtures, includingPropertiesForKeys: nil))?
            .filter { $0.pathExtension == "mscr" }.sorted { $0.lastPathComponent < $1.lastPathComponent } ?? []
        try XCTSkipIf(files.isEmpty, "no fixtures in \(Self.fixtures.path)")
        for file in files {
            bench?.stop()
            bench = PSSimBench()
            let script = try String(contentsOf: file, encoding: .utf8)
            let lines = bench.run(script, step: 0.5, maxStep: 600)
            let name = file.lastPathComponent
            XCTAssertFalse(lines.contains { $0.hasPrefix("!") }, "\(name): \(lines.suffix(3))")
            psSimAssertWellFormed(lines)
            let measLoops = lines.filter { $0 == "M0000" }.count
            XCTAssertGreaterThan(measLoops, 0, name)
            XCTAssertEqual(measLoops, lines.filter { $0 == "*" }.count, name)
            XCTAssertGreaterThan(psSimPackages(lines).filter { $0.count >= 3 }.count, measLoops, "\(name): data in every loop")
            for p in psSimPackages(lines) {
                XCTAssertTrue(p.allSatisfy { !$0.value.isNaN }, name)
            }
        }
    }

    /// The GCD fixture cycles the shared cell: the state of charge goes up and back down, and the
    /// upper limit is reported.
    func testGCDFixture_cyclesTheSharedCell() throws {
        let file = Self.fixtures.appendingPathComponent("gcd.mscr")
        try XCTSkipUnless(FileManager.default.fileExists(atPath: file.path))
        bench = PSSimBench()
        var maxSOC = 0.0
        let lines = bench.run(
            try String(contentsOf: file, encoding: .utf8), step: 0.5, maxStep: 120,
            onLine: { _, b in
                maxSOC = max(maxSOC, b.cell.snapshot.stateOfCharge)
                return false
            })
        psSimAssertWellFormed(lines)
        XCTAssertEqual(lines.filter { $0 == "TLIMIT upper" }.count, 2)
        XCTAssertEqual(lines.filter { $0 == "TLIMIT lower" }.count, 2)
        XCTAssertGreaterThan(maxSOC, 0.8)
        XCTAssertLessThan(bench.cell.snapshot.stateOfCharge, 0.2)
    }

    /// Scripts written in the public examples' style (comments, tabs, `set_pgstat_chan`,
    /// `set_range_minmax`, `nscans`, variables as technique arguments), measured around a
    /// reference placed at the cell's OCV so ±0.5 V sweeps stay near equilibrium.
    func testExampleStyleScripts_produceTheExpectedStructure() {
        var model = PalmSensCellModel.Parameters()
        model.referenceOffsetV = VirtualCell.openCircuitVoltage(stateOfCharge: 0.1)
        bench = PSSimBench(model: model)
        let lsv = bench.run(
            """
            var potential
            var current
            var e_begin
            var e_end
            store_var e_begin -200m ja
            store_var e_end 200m ja
            # technique setup
            set_pgstat_chan 0
            set_pgstat_mode 2
            set_max_bandwidth 40
            set_range_minmax da e_begin e_end
            set_range ba 100u
            set_autoranging ba 100n 5m
            set_e e_begin\t# where the cell starts
            cell_on
            meas_loop_lsv potential current e_begin e_end 10m 100m
            \tpck_start
            \tpck_add potential
            \tpck_add current
            \tpck_end
            endloop
            on_finished:
            cell_off
            """)
        psSimAssertWellFormed(lsv)
        let pk = psSimPackages(lsv)
        XCTAssertEqual(pk.count, 41)
        XCTAssertEqual(pk.first?[0].value ?? 0, -0.2, accuracy: 1e-9)
        XCTAssertEqual(pk.last?[0].value ?? 0, 0.2, accuracy: 1e-9)
        XCTAssertLessThan(pk.first![1].value, 0, "below equilibrium the cell discharges")
        XCTAssertGreaterThan(pk.last![1].value, 0, "above equilibrium it charges")

        let cv = bench.run(
            """
            var p
            var c
            set_pgstat_mode 2
            set_autoranging ba 100n 5m
            set_e 0
            cell_on
            meas_loop_ca p c 0 100m 300m
            endloop
            meas_loop_cv p c 0 100m -100m 20m 200m nscans(3)
              pck_start
              pck_add p
              pck_add c
              pck_end
            endloop
            on_finished:
              cell_off
            """)
        psSimAssertWellFormed(cv)
        XCTAssertEqual(cv.filter { $0 == "M0000" }.count, 2, "the empty CA loop still reports M … *")
        XCTAssertEqual(cv.filter { $0.hasPrefix("C") }, ["C0000", "C0001", "C0002"])
        XCTAssertEqual(psSimPackages(cv).count, 20 + 20 + 21)
    }
}
