import Foundation
import OperandoCore
import OperandoIO
import PalmSensDriver
import Synchronization
import OperandoTestSupport
import XCTest

private final class CollectingSink: RecordSink, @unchecked Sendable {
    let clock: any HostClock
    private let lock = Mutex<([(Int, Int64?, [Double])], [Event], [Int64])>(([], [], []))
    init(clock: any HostClock) { self.clock = clock }
    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        let values = (0..<(payload.count / 8)).map { payload.loadUnaligned(fromByteOffset: 8 * $0, as: Double.self) }
        lock.withLock { $0.0.append((stream, deviceTime, values)) }
    }
    func event(_ event: Event) { lock.withLock { $0.1.append(event) } }
    func clockStamp(deviceTime: Int64, arrival: HostInstant) { lock.withLock { $0.2.append(deviceTime) } }
    var records: [(Int, Int64?, [Double])] { lock.withLock { $0.0 } }
    var events: [Event] { lock.withLock { $0.1 } }
    var stamps: [Int64] { lock.withLock { $0.2 } }
}

/// A scripted device: answers identification and abort, acknowledges a script with `e` and then
/// replays `transcript` (lines without `\n`). Records every script it received.
private final class ScriptedDevice: @unchecked Sendable {
    let port: any ByteStreamTransport
    let transcript: [String]
    let refuseWith: String?
    let scripts = Mutex<[String]>([])
    let stop = Atomic<Bool>(false)

    init(port: any ByteStreamTransport, transcript: [String], refuseWith: String? = nil) {
        self.port = port
        self.transcript = transcript
        self.refuseWith = refuseWith
    }

    func send(_ s: String) { try? port.write(s, timeout: .seconds(1)) }

    func serve() {
        var buffer = [UInt8](repeating: 0, count: 512)
        var line: [UInt8] = []
        var script: [String]?
        while !stop.load(ordering: .relaxed) {
            guard let read = try? buffer.withUnsafeMutableBytes({ try port.read(into: $0, timeout: .milliseconds(10)) }) else { return }
            for b in buffer[0..<read.count] {
                guard b == UInt8(ascii: "\n") else { line.append(b); continue }
                let text = String(decoding: line, as: UTF8.self)
                line.removeAll()
                if var s = script {
                    if text.isEmpty {
                        scripts.withLock { $0.append(s.joined(separator: "\n")) }
                        script = nil
                        if let refuseWith { send(refuseWith + "\n") } else { send("e\n" + transcript.map { $0 + "\n" }.joined()) }
                    } else {
                        s.append(text)
                        script = s
                    }
                    continue
                }
                switch text {
                case "Z": send("Z!0006\n")
                case "t": send("tespico1.2 MethodSCRIPT\nR1.2.3 2024*\n")
                case "v": send("v1.6\n")
                case "i": send("iPICO-0042\n")
                case "e": script = []
                default: break
                }
            }
        }
    }
}

final class DriverTests: XCTestCase {
    let clock = MonotonicRawClock()

    private func run(settings: [String: EventValue] = [:], transcript: [String], refuseWith: String? = nil,
                     _ body: (PalmSensDriver, DeviceLink, CollectingSink, ScriptedDevice) throws -> Void) throws {
        let link = InMemoryLink(clock: clock)
        let device = ScriptedDevice(port: link.deviceByteStream, transcript: transcript, refuseWith: refuseWith)
        let thread = IOThread(name: "palmsens-fake") { device.serve() }
        defer {
            device.stop.store(true, ordering: .relaxed)
            thread.join()
        }
        let driver = try PalmSensDriver(name: "pstat", settings: DeviceSettings(settings))
        try body(driver, .byteStream(link.hostByteStream), CollectingSink(clock: clock), device)
    }

    private func drain(_ d: PalmSensDriver, _ l: DeviceLink, _ s: CollectingSink, until: () -> Bool) throws {
        for _ in 0..<500 where !until() { try d.acquire(link: l, sink: s, budget: .milliseconds(10)) }
    }

    func testDefaults_nameLinkAndSerial() {
        XCTAssertEqual(PalmSensDriver.driverName, "palmsens-methodscript")
        XCTAssertEqual(PalmSensDriver.linkKind, .byteStream)
        XCTAssertEqual(PalmSensDriver.serialDefaults.baudRate, 230_400)
        XCTAssertEqual(PalmSensDriver.serialDefaults.dataBits, 8)
        XCTAssertEqual(PalmSensDriver.serialDefaults.parity, .none)
        XCTAssertEqual(PalmSensDriver.serialDefaults.stopBits, 1)
    }

    func testSetup_abortsAndIdentifiesThePico() throws {
        try run(transcript: []) { driver, link, sink, _ in
            let id = try driver.setup(link: link, sink: sink)
            XCTAssertEqual(id.model, "EmStat Pico")
            XCTAssertEqual(id.serialNumber, "PICO-0042")
            XCTAssertEqual(id.firmware, "espico1.2 MethodSCRIPT R1.2.3 2024")
            XCTAssertEqual(id.protocolVersion, "MethodSCRIPT 1.6")
        }
    }

    func testTechnique_runsAndRecordsStepsSamplesLimitAndFinish() throws {
        let transcript = [
            "M0000", "TSTEP 1 gcd-charge", "Peb8000000 ;jb8000001i", "*",
            "M0001", "Peb8000064m;ab80010CCm;db8000001m;ja8000001i;jb8000001i",
            "Peb80000C8m;ab8001068m;db8000001m,12;ja8000001i;jb8000001i", "TLIMIT upper", "*",
            "!4004: Line 3, Col 5", "",
        ]
        try run(settings: ["trigger_gpio_mask": .integer(1), "gcd_capacity_mah": .number(2)], transcript: transcript) { driver, link, sink, device in
            _ = try driver.setup(link: link, sink: sink)
            let json = #"{"kind": "gcd", "c_rate": 0.5, "upper_limit_v": 4.2, "lower_limit_v": 3.0, "cycles": 1, "interval_s": 0.1}"#
            let result = try driver.perform(DeviceCommand(device: "pstat", name: "technique", arguments: ["json": .string(json)]), link: link, sink: sink)
            XCTAssertEqual(result["technique"], .string("gcd"))
            XCTAssertEqual(result["steps"], .integer(2))
            try drain(driver, link, sink) { sink.events.contains { $0.message.hasPrefix("script finished") } }

            let sent = device.scripts.withLock { $0 }
            XCTAssertEqual(sent.count, 1)
            XCTAssertTrue(sent[0].contains("meas_loop_cp p c 1m 100m 10800"), sent[0])

            let samples = sink.records.filter { $0.0 == 0 }
            XCTAssertEqual(samples.count, 2)
            XCTAssertEqual(samples[0].2[0], 4.3, accuracy: 1e-12, "E")
            XCTAssertEqual(samples[0].2[1], 0.001, accuracy: 1e-15, "I")
            XCTAssertEqual(samples[0].2[2], 0.1, accuracy: 1e-12, "device time")
            XCTAssertEqual(samples[0].2[3], 1, "cycle")
            XCTAssertEqual(samples[0].2[4], 1, "step")
            XCTAssertEqual(samples[1].2[6], 2, "overload status")
            XCTAssertEqual(samples[1].1, 200_000_000)
            XCTAssertEqual(sink.stamps, [0, 100_000_000, 200_000_000])

            let messages = sink.events.map(\.message)
            XCTAssertTrue(messages.contains { $0.hasPrefix("technique started: gcd") }, "\(messages)")
            let step = sink.events.first { $0.message.hasPrefix("step 1: gcd-charge") }
            XCTAssertEqual(step?.deviceTime, 0)
            XCTAssertEqual(step?.values["setpoint_a"], .number(0.001))
            XCTAssertTrue(messages.contains { $0.hasPrefix("setpoint: I = 0.001 A") })
            XCTAssertTrue(messages.contains { $0.hasPrefix("trigger: GPIO mask 0x1 pulsed at step 1") })
            let limit = sink.events.first { $0.message.hasPrefix("limit reached: upper") }
            XCTAssertEqual(limit?.deviceTime, 200_000_000)
            let alarm = sink.events.first { $0.kind == .alarm }
            XCTAssertEqual(alarm?.values["code"], .string("4004"))
            XCTAssertEqual(alarm?.values["line"], .integer(3))
            XCTAssertEqual(alarm?.values["column"], .integer(5))

            let status = try driver.perform(DeviceCommand(device: "pstat", name: "status"), link: link, sink: sink)
            XCTAssertEqual(status["running"], .bool(false))
            XCTAssertEqual(status["technique"], .string("gcd"))
            XCTAssertEqual(status["e_v"]?.doubleValue ?? 0, 4.2, accuracy: 1e-12)
            XCTAssertEqual(driver.malformedLines, 0)
        }
    }

    func testEISPackages_goToTheEISStream() throws {
        let transcript = ["M0000", "Peb8000000 ;dc80186A0 ;cc8000064 ,203;cd7FFFF9C ;ci80000C8m;ja8000000i;jb8000001i", "*", ""]
        try run(transcript: transcript) { driver, link, sink, _ in
            _ = try driver.setup(link: link, sink: sink)
            _ = try driver.perform(DeviceCommand(device: "pstat", name: "technique", arguments: ["json": .string(GeneratorExamples.json["eis"]!)]), link: link, sink: sink)
            try drain(driver, link, sink) { sink.events.contains { $0.message.hasPrefix("script finished") } }
            let eis = sink.records.filter { $0.0 == 1 }
            XCTAssertEqual(eis.count, 1)
            XCTAssertEqual(eis.first?.2, [100_000, 100, -100, 0.2, 0])
        }
    }

    func testRefusedScript_throwsWithTheErrorAndPosition() throws {
        try run(transcript: [], refuseWith: "!4004: Line 7, Col 2") { driver, link, sink, _ in
            _ = try driver.setup(link: link, sink: sink)
            XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "pstat", name: "technique", arguments: ["json": .string(GeneratorExamples.json["ocp"]!)]), link: link, sink: sink)) { error in
                XCTAssertEqual((error as? InstrumentError)?.code, .rejected)
                XCTAssertTrue("\(error)".contains("4004") && "\(error)".contains("line 7"), "\(error)")
            }
        }
    }

    func testAbort_whenIdle_reportsNothingToAbort() throws {
        try run(transcript: []) { driver, link, sink, _ in
            _ = try driver.setup(link: link, sink: sink)
            let r = try driver.perform(DeviceCommand(device: "pstat", name: "abort"), link: link, sink: sink)
            XCTAssertEqual(r["aborted"], .bool(false))
        }
    }

    func testBadTechnique_isRejectedNamingTheField() throws {
        try run(transcript: []) { driver, link, sink, _ in
            _ = try driver.setup(link: link, sink: sink)
            let json = #"{"kind": "cv", "begin_v": 0, "vertex1_v": 0.5, "vertex2_v": -0.5, "step_v": 0.01, "scan_rate_v_per_s": 20}"#
            XCTAssertThrowsError(try driver.perform(DeviceCommand(device: "pstat", name: "technique", arguments: ["json": .string(json)]), link: link, sink: sink)) { error in
                XCTAssertTrue("\(error)".contains("scan_rate_v_per_s"), "\(error)")
            }
        }
    }

    func testGarbageBytes_becomeAlarmsNotCrashes() throws {
        try run(transcript: ["M0000", "P\u{7}\u{1}xx", "Q?", "Peb8000000 ;da8000000 ;ba8000000 ;ja8000000i;jb8000001i", "*", ""]) { driver, link, sink, _ in
            _ = try driver.setup(link: link, sink: sink)
            _ = try driver.perform(DeviceCommand(device: "pstat", name: "technique", arguments: ["json": .string(GeneratorExamples.json["hold"]!)]), link: link, sink: sink)
            try drain(driver, link, sink) { sink.events.contains { $0.message.hasPrefix("script finished") } }
            XCTAssertEqual(driver.malformedLines, 2)
            XCTAssertEqual(sink.records.filter { $0.0 == 0 }.count, 1)
        }
    }
}

final class CodecTechniqueTests: XCTestCase {
    private func error(_ json: String) -> String {
        do {
            _ = try Program.decode(json: json)
            return "no error"
        } catch { return "\(error)" }
    }

    func testValidation_namesTheField() {
        XCTAssertTrue(error(#"{"kind": "ocp", "interval_s": 1}"#).hasPrefix("duration_s: is required"))
        XCTAssertTrue(error(#"{"kind": "ocp", "duration_s": "x", "interval_s": 1}"#).hasPrefix("duration_s: expected a number"))
        XCTAssertTrue(error(#"{"kind": "ocp", "duration_s": 1, "interval_s": 2}"#).hasPrefix("interval_s:"))
        XCTAssertTrue(error(#"{"kind": "warp"}"#).hasPrefix("kind:"))
        XCTAssertTrue(error(#"{"kind": "cv", "begin_v": 0, "vertex1_v": 0.5, "vertex2_v": -0.5, "step_v": 0.01, "scan_rate_v_per_s": 0.0000001}"#).hasPrefix("scan_rate_v_per_s:"))
        XCTAssertTrue(error(#"{"kind": "gcd", "upper_limit_v": 4.2, "lower_limit_v": 3}"#).hasPrefix("current_a:"))
        XCTAssertTrue(error(#"{"kind": "gcd", "current_a": 0.001, "c_rate": 1, "upper_limit_v": 4.2, "lower_limit_v": 3}"#).hasPrefix("c_rate:"))
        XCTAssertTrue(error(#"{"kind": "gcd", "current_a": 0.001, "upper_limit_v": 3, "lower_limit_v": 4}"#).hasPrefix("upper_limit_v:"))
        XCTAssertTrue(error(#"{"kind": "eis", "f_start_hz": 1e5, "f_end_hz": 1, "amplitude_v_rms": 0.01}"#).hasPrefix("points_per_decade:"))
        XCTAssertTrue(error(#"{"kind": "ca", "steps": [{"potential_v": 20, "duration_s": 1}], "interval_s": 0.1}"#).hasPrefix("steps[0].potential_v:"))
        let nested = error(#"{"kind": "protocol", "steps": [{"repeat": 2, "steps": [{"kind": "hold", "potential_v": 0, "duration_s": -1}]}]}"#)
        XCTAssertTrue(nested.hasPrefix("steps[0].steps[0].duration_s:"), nested)
        XCTAssertTrue(error(#"{"kind": "protocol", "steps": []}"#).hasPrefix("steps:"))
    }

    func testCRate_withoutCapacity_failsAtGeneration() throws {
        let p = try Program.decode(json: #"{"kind": "gcd", "c_rate": 1, "upper_limit_v": 4.2, "lower_limit_v": 3}"#)
        XCTAssertThrowsError(try MethodSCRIPTGenerator().generate(p)) { XCTAssertTrue("\($0)".contains("capacity_mah"), "\($0)") }
        XCTAssertNoThrow(try MethodSCRIPTGenerator(defaultCapacityMah: 2).generate(p))
    }

    func testRoundTrip_throughJSON() throws {
        for (_, json) in GeneratorExamples.json {
            let p = try Program.decode(json: json)
            XCTAssertEqual(try Program.decode(json: p.json), p)
        }
    }

    func testFormationProtocol_stepTable() throws {
        let s = try GeneratorExamples.script("protocol")
        XCTAssertEqual(s.steps.map(\.kind), ["gcd-charge", "gcd-rest", "gcd-discharge", "gcd-rest", "gcd-charge", "gcd-rest", "gcd-discharge", "gcd-rest", "eis"])
        XCTAssertTrue(s.text.contains("loop r1 < 10i"))
        XCTAssertTrue(s.text.contains("meas_loop_cp p c 250u 10 54k"), "C/10 of 2.5 mAh")
        XCTAssertTrue(s.text.contains("meas_loop_eis f zr zi 5m 10k 100m 31i 3"))
        XCTAssertTrue(s.text.hasSuffix("on_finished:\n    cell_off\n"))
    }
}
