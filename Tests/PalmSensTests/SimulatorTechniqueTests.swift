import Foundation
import OperandoVirtualCell
import PalmSensSimulator
import XCTest

/// The techniques against the battery model: what an electrochemist expects to see.
final class SimulatorTechniqueTests: XCTestCase {
    private var bench: PSSimBench!

    override func tearDown() {
        bench?.stop()
        bench = nil
        super.tearDown()
    }

    private func start(soc: Double = 0.3, model: PalmSensCellModel.Parameters = PalmSensCellModel.Parameters()) -> PSSimBench {
        var p = VirtualCell.Parameters()
        p.initialStateOfCharge = soc
        bench = PSSimBench(cell: VirtualCell(p), model: model)
        return bench
    }

    private func ocv(_ b: PSSimBench) -> Double { VirtualCell.openCircuitVoltage(stateOfCharge: b.cell.snapshot.stateOfCharge) }

    func testOCP_equalsTheCellsOpenCircuitVoltage() {
        let b = start()
        let expected = ocv(b)
        let lines = b.run(
            """
            var p
            var t
            cell_off
            timer_start
            meas_loop_ocp p 100m 1
              timer_get t
              pck_start
              pck_add t
              pck_add p
              pck_end
            endloop
            """)
        psSimAssertWellFormed(lines)
        let pk = psSimPackages(lines)
        XCTAssertEqual(pk.count, 10)
        for (k, p) in pk.enumerated() {
            XCTAssertEqual(p[0].type, "eb")
            XCTAssertEqual(p[0].value, 0.1 * Double(k + 1), accuracy: 2e-3)
            XCTAssertEqual(p[1].type, "ab")
            XCTAssertEqual(p[1].value, expected, accuracy: 1e-3)
        }
    }

    func testCA_packagesComeAtTheirIntervalOnTheInjectedClock() {
        let b = start()
        b.send("e\nvar p\nvar c\nset_range ba 5m\nmeas_loop_ca p c 3.6 100m 1\npck_start\npck_add c\npck_end\nendloop\n\n")
        XCTAssertEqual(b.line(), "e")
        XCTAssertEqual(b.line(), "M0000")
        b.advance(seconds: 0.25)
        XCTAssertTrue(b.line().hasPrefix("P"))
        XCTAssertTrue(b.line().hasPrefix("P"))
        XCTAssertEqual(b.drain(), [], "the third sample is due at 0.3 s")
        b.advance(seconds: 0.1)
        XCTAssertTrue(b.line().hasPrefix("P"))
    }

    func testCA_currentDecaysAfterAPotentialStep_andChargesTheSharedCell() {
        let b = start()
        let e = ocv(b) + 0.1
        let soc0 = b.cell.snapshot.stateOfCharge
        let lines = b.run(
            """
            var p
            var c
            set_pgstat_mode 2
            set_range ba 1m
            set_autoranging ba 100n 5m
            set_e \(e)
            cell_on
            meas_loop_ca p c \(e) 100m 3
              pck_start
              pck_add p
              pck_add c
              pck_end
            endloop
            on_finished:
              cell_off
            """)
        psSimAssertWellFormed(lines)
        let pk = psSimPackages(lines)
        XCTAssertEqual(pk.count, 30)
        XCTAssertEqual(pk[0][0].value, e, accuracy: 1e-6)
        let currents = pk.map { $0[1].value }
        XCTAssertGreaterThan(currents[0], 0.5e-3, "about 0.1 V / 70 Ω right after the step")
        XCTAssertLessThan(currents.last!, 0.85 * currents[0], "the current decays")
        XCTAssertTrue(zip(currents, currents.dropFirst()).allSatisfy { $1 < $0 + 5e-6 })
        // Coulomb counting on the shared cell: ΔSOC = Q · timeScale / (capacity · 3600).
        let charge = currents.reduce(0, +) * 0.1
        let p = b.cell.parameters
        XCTAssertEqual(b.cell.snapshot.stateOfCharge - soc0, charge * p.timeScale / (p.capacityAh * 3600), accuracy: 0.01)
        XCTAssertGreaterThan(b.cell.snapshot.stateOfCharge, soc0 + 0.02)
    }

    func testGCD_voltageRisesToTheLimit_thenDropsByIR() {
        let b = start(soc: 0.2)
        let lines = b.run(
            """
            var p
            var c
            var t
            set_pgstat_mode 2
            set_range ba 5m
            timer_start
            meas_loop_cp p c 1m 200m 100
              timer_get t
              pck_start
              pck_add t
              pck_add p
              pck_add c
              pck_end
              if p > 4.15
                breakloop
              endif
            endloop
            meas_loop_cp p c -1m 200m 10
              timer_get t
              pck_start
              pck_add t
              pck_add p
              pck_add c
              pck_end
            endloop
            on_finished:
              cell_off
            """, step: 0.2)
        psSimAssertWellFormed(lines)
        XCTAssertEqual(lines.filter { $0 == "M0000" }.count, 2)
        let loops = lines.split(separator: "*")
        let charge = psSimPackages(Array(loops[0]))
        let discharge = psSimPackages(Array(loops[1]))
        XCTAssertGreaterThan(charge.count, 20)
        XCTAssertLessThan(charge.count, 500, "the limit was reached well before 100 s")
        let ec = charge.map { $0[1].value }
        XCTAssertGreaterThan(ec.last!, 4.15)
        XCTAssertLessThan(ec.first!, 3.8)
        XCTAssertGreaterThan(ec.last!, ec.first! + 0.3)
        // Mostly monotonic rise (noise aside).
        XCTAssertTrue(zip(ec, ec.dropFirst()).allSatisfy { $1 > $0 - 1e-3 })
        XCTAssertEqual(charge[0][2].value, 1e-3, accuracy: 2e-5)
        XCTAssertEqual(discharge[0][2].value, -1e-3, accuracy: 2e-5)
        // IR drop: 2 mA × (R_s + R_ct) = 140 mV within one sample of the current reversal.
        let drop = ec.last! - discharge[0][1].value
        XCTAssertGreaterThan(drop, 0.12)
        XCTAssertLessThan(drop, 0.25)
        XCTAssertTrue(discharge.map { $0[1].value }.allSatisfy { $0 < ec.last! - 0.1 })
    }

    func testCV_currentSignFollowsTheSweepDirection() {
        let b = start(soc: 0.4)
        let e0 = (ocv(b) * 100).rounded() / 100
        let lines = b.run(
            """
            var p
            var c
            set_pgstat_mode 2
            set_range ba 1m
            set_autoranging ba 100n 5m
            set_e \(e0)
            cell_on
            meas_loop_cv p c \(e0) \(e0 + 0.2) \(e0 - 0.2) 10m 50m nscans(2)
              pck_start
              pck_add p
              pck_add c
              pck_end
            endloop
            on_finished:
              cell_off
            """, step: 0.2)
        psSimAssertWellFormed(lines)
        XCTAssertEqual(lines.filter { $0.hasPrefix("C") }, ["C0000", "C0001"])
        XCTAssertEqual(lines.filter { $0 == "-" }.count, 2)
        let pk = psSimPackages(lines)
        XCTAssertEqual(pk.count, 80 + 81)
        let e = pk.map { $0[0].value }
        let i = pk.map { $0[1].value }
        XCTAssertEqual(e.max()!, e0 + 0.2, accuracy: 1e-6)
        XCTAssertEqual(e.min()!, e0 - 0.2, accuracy: 1e-6)
        // Second halves of each branch of the first scan: anodic (up) > 0, cathodic (down) < 0.
        let up = i[10..<21]
        let down = i[30..<60]
        XCTAssertGreaterThan(up.reduce(0, +) / Double(up.count), 20e-6)
        XCTAssertLessThan(down.reduce(0, +) / Double(down.count), -20e-6)
    }

    func testEIS_nyquistHasASemicircleAndAWarburgTail() {
        let b = start()
        let m = PalmSensCellModel.Parameters()
        let lines = b.run(
            """
            var f
            var zr
            var zi
            set_pgstat_mode 3
            set_range ba 100u
            set_autoranging ba 100n 5m
            set_e \(ocv(b))
            cell_on
            meas_loop_eis f zr zi 10m 100k 100m 37 \(ocv(b))
              pck_start
              pck_add f
              pck_add zr
              pck_add zi
              pck_end
            endloop
            on_finished:
              cell_off
            """, step: 0.5)
        psSimAssertWellFormed(lines)
        let pk = psSimPackages(lines)
        XCTAssertEqual(pk.count, 37)
        XCTAssertEqual(pk.first![0].type, "dc")
        XCTAssertEqual(pk.first![0].value, 100e3, accuracy: 1)
        XCTAssertEqual(pk.last![0].value, 0.1, accuracy: 1e-4)
        XCTAssertEqual(pk[0][1].type, "cc")
        XCTAssertEqual(pk[0][2].type, "cd")
        XCTAssertNotNil(pk[0][1].range)
        let f = pk.map { $0[0].value }
        let zr = pk.map { $0[1].value }
        let nzi = pk.map { -$0[2].value }
        // High frequency: Z' → R_s.
        XCTAssertEqual(zr[0], m.seriesOhms, accuracy: 2)
        // The semicircle's top sits near 1/(2π R_ct C_dl).
        let corner = 1 / (2 * Double.pi * m.chargeTransferOhms * m.doubleLayerFarads)
        let semicircle = (0..<pk.count).filter { f[$0] > 20 }
        let top = semicircle.max(by: { nzi[$0] < nzi[$1] })!
        XCTAssertGreaterThan(f[top], corner / 3)
        XCTAssertLessThan(f[top], corner * 3)
        XCTAssertEqual(nzi[top], m.chargeTransferOhms / 2, accuracy: m.chargeTransferOhms * 0.2)
        // Low frequency: a 45° line, −ΔZ''/ΔZ' ≈ 1.
        let n = pk.count
        let slope = (nzi[n - 1] - nzi[n - 5]) / (zr[n - 1] - zr[n - 5])
        XCTAssertEqual(slope, 1, accuracy: 0.25)
        XCTAssertTrue(nzi.allSatisfy { $0 > -1 })
    }

    func testFixedRange_overloadsAndSaturates() {
        let b = start()
        let e = ocv(b) + 0.1
        let lines = b.run(
            """
            var p
            var c
            set_pgstat_mode 2
            set_range ba 100n
            set_e \(e)
            cell_on
            meas_loop_ca p c \(e) 100m 500m
              pck_start
              pck_add c
              pck_end
            endloop
            on_finished:
              cell_off
            """)
        let pk = psSimPackages(lines)
        XCTAssertEqual(pk.count, 5)
        for p in pk {
            XCTAssertEqual(p[0].range, 0, "100 nA range on the EmStat Pico")
            XCTAssertEqual((p[0].status ?? 0) & 2, 2, "overload")
            XCTAssertEqual(p[0].value, 100e-9, accuracy: 1e-12)
        }
    }

    func testAutoranging_picksTheRangeThatFits_andUnderloadIsFlagged() {
        let b = start()
        let e = ocv(b) + 0.1
        let lines = b.run(
            """
            var p
            var c
            var o
            set_pgstat_mode 2
            set_range ba 100n
            set_autoranging ba 100n 5m
            set_e \(e)
            cell_on
            meas_loop_ca p c \(e) 100m 300m
              pck_start
              pck_add c
              pck_end
            endloop
            set_autoranging ba 5m 5m
            set_range ba 5m
            cell_off
            wait 10
            meas_loop_ocp o 100m 100m
            endloop
            meas_loop_ca p c o 100m 300m
              pck_start
              pck_add c
              pck_end
            endloop
            on_finished:
              cell_off
            """)
        let pk = psSimPackages(lines)
        XCTAssertEqual(pk.count, 6)
        XCTAssertEqual(pk[0][0].range, 11, "a ~1.4 mA current lands in the 5 mA range")
        XCTAssertEqual((pk[0][0].status ?? 0) & 2, 0)
        XCTAssertGreaterThan(pk[0][0].value, 0.5e-3)
        XCTAssertEqual(pk[5][0].range, 11)
        XCTAssertEqual((pk[5][0].status ?? 0) & 4, 4, "a near-zero current in the 5 mA range is underload")
    }
}
