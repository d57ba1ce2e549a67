import Foundation
import XCTest

@testable import OperandoDaemon

final class ConfigTests: XCTestCase {
    private let good = """
        [daemon]
        memory_budget_mb = 64
        ring_mb = 2

        [[device]]
        name = "pstat"
        driver = "demo-potentiostat"
        transport = "simulated"
        [device.settings]
        rate_hz = 50

        [[device]]
        name = "remote"
        driver = "demo-potentiostat"
        transport = "tcp:127.0.0.1:6501"
        overflow = "drop-newest"
        """

    private func errors(_ text: String) -> [ConfigError] {
        do {
            _ = try ConfigLoader.parse(text: text, path: "lab.toml")
            XCTFail("accepted:\n\(text)")
            return []
        } catch let e as ConfigErrors {
            return e.errors
        } catch {
            XCTFail("unexpected \(error)")
            return []
        }
    }

    func testParse_goodConfig_readsEveryKey() throws {
        let c = try ConfigLoader.parse(text: good, path: "lab.toml")
        XCTAssertEqual(c.memoryBudgetBytes, 64 << 20)
        XCTAssertEqual(c.devices.map(\.name), ["pstat", "remote"])
        XCTAssertEqual(c.devices[1].transport, .tcp(host: "127.0.0.1", port: 6501))
        XCTAssertEqual(c.devices[1].overflow, .dropNewest)
        XCTAssertEqual(c.devices[0].settings.double("rate_hz"), 50)
        XCTAssertEqual(c.syncInterval, .milliseconds(500), "default")
    }

    func testParse_serialTransports_byPathAndIdentity_withLineSettings() throws {
        let text = good + """

            [[device]]
            name = "stage"
            driver = "zaber-ascii"
            transport = "serial:usb:2939:495b:AB123"
            parity = "even"
            dtr = false

            [[device]]
            name = "pty"
            driver = "zaber-ascii"
            transport = "serial:/tmp/zaber0"
            baud = 9600

            [[device]]
            name = "byport"
            driver = "zaber-ascii"
            transport = "serial:port=1-1.2"

            [[device]]
            name = "bysn"
            driver = "zaber-ascii"
            transport = "serial:serial=FT1234"
            """
        let c = try ConfigLoader.parse(text: text, path: "lab.toml")
        let d = Dictionary(uniqueKeysWithValues: c.devices.map { ($0.name, $0) })
        XCTAssertEqual(d["stage"]?.transport, .serial(.usb(vendor: 0x2939, product: 0x495B, serialNumber: "AB123")))
        XCTAssertEqual(d["stage"]?.serial.baudRate, 115_200, "the Zaber driver's default")
        XCTAssertEqual(d["stage"]?.serial.parity, .even)
        XCTAssertEqual(d["stage"]?.serial.dtr, false)
        XCTAssertEqual(d["pty"]?.transport, .serial(.path("/tmp/zaber0")))
        XCTAssertEqual(d["pty"]?.serial.baudRate, 9600)
        XCTAssertEqual(d["byport"]?.transport, .serial(.usbPort("1-1.2")))
        XCTAssertEqual(d["bysn"]?.transport, .serial(.serialNumber("FT1234")))
        XCTAssertEqual(d["stage"]?.transport.description, "serial:usb:2939:495b:AB123")
    }

    func testDemoConfig_isValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let c = try ConfigLoader.load(path: root.appendingPathComponent("Config/demo.toml").path)
        XCTAssertEqual(c.devices.map(\.name), ["pstat", "xrf", "dp5", "stage", "afm"])
    }

    func testErrors_nameFileLineKeyAndExpectation() {
        let cases: [(String, Int?, String, String)] = [
            (good.replacingOccurrences(of: "memory_budget_mb = 64", with: "memory_budget_mb = \"lots\""), 2, "daemon.memory_budget_mb", "expected a whole number"),
            (good.replacingOccurrences(of: "ring_mb = 2", with: "ring_mb = 0"), 3, "daemon.ring_mb", "outside 1…16384"),
            (good.replacingOccurrences(of: "ring_mb = 2", with: "ring_mb = 2\nsync_intervall_ms = 5"), 4, "daemon.sync_intervall_ms", "unknown key"),
            (good.replacingOccurrences(of: "name = \"remote\"", with: "name = \"pstat\""), 13, "device[1].name", "used by another device"),
            (good.replacingOccurrences(of: "transport = \"tcp:127.0.0.1:6501\"", with: "transport = \"tcp:nowhere\""), 15, "device[1].transport", "expected tcp:HOST:PORT"),
            (good.replacingOccurrences(of: "driver = \"demo-potentiostat\"\ntransport = \"simulated\"", with: "driver = \"keithley\"\ntransport = \"simulated\""), 7, "device[0].driver", "expected one of"),
            (good.replacingOccurrences(of: "rate_hz = 50", with: "rate_hz = 50000"), 10, "device[0].settings.rate_hz", "outside 1…10000"),
            (good.replacingOccurrences(of: "overflow = \"drop-newest\"", with: "overflow = \"drop-some\""), 16, "device[1].overflow", "\"block\""),
            (good.replacingOccurrences(of: "transport = \"simulated\"\n", with: ""), 5, "device[0].transport", "is required"),
            (good.replacingOccurrences(of: "memory_budget_mb = 64", with: "memory_budget_mb = 3"), 2, "daemon.memory_budget_mb", "the rings need"),
            (good.replacingOccurrences(of: "transport = \"simulated\"", with: "transport = \"usb:10c4:842a\""), 8, "device[0].transport", "cannot run over USB bulk endpoints"),
            (good.replacingOccurrences(of: "transport = \"simulated\"", with: "transport = \"usb:10c4\""), 8, "device[0].transport", "usb:VID:PID[:SERIAL]"),
            (good.replacingOccurrences(of: "transport = \"simulated\"", with: "transport = \"serial:usb:zz:1\""), 8, "device[0].transport", "serial:usb:VID:PID"),
            (good.replacingOccurrences(of: "overflow = \"drop-newest\"", with: "baud = \"fast\""), 16, "device[1].baud", "expected a whole number"),
            (good.replacingOccurrences(of: "overflow = \"drop-newest\"", with: "dtr = 1"), 16, "device[1].dtr", "expected true or false"),
            (good.replacingOccurrences(of: "driver = \"demo-potentiostat\"\ntransport = \"tcp", with: "driver = \"demo-xrf\"\ntransport = \"tcp"), 15, "device[1].transport", "cannot run over a byte stream"),
        ]
        for (text, line, key, fragment) in cases {
            let found = errors(text)
            let match = found.first { $0.key == key }
            XCTAssertNotNil(match, "no error for \(key) in \(found)")
            XCTAssertEqual(match?.file, "lab.toml")
            XCTAssertEqual(match?.line, line, "\(key): \(match?.description ?? "")")
            XCTAssertTrue(match?.message.contains(fragment) ?? false, "\(match?.description ?? "") should contain \(fragment)")
            XCTAssertTrue(match?.description.hasPrefix("lab.toml:") ?? false)
        }
    }

    func testErrors_invalidTOML_givesTheLine() {
        let found = errors("[daemon]\nmemory_budget_mb = 64\n[[device]\nname = 1\n")
        XCTAssertEqual(found.count, 1)
        XCTAssertEqual(found.first?.line, 3)
        XCTAssertTrue(found.first?.message.contains("not valid TOML") ?? false)
    }

    func testErrors_allProblemsAreReportedAtOnce() {
        let text = good.replacingOccurrences(of: "ring_mb = 2", with: "ring_mb = -1").replacingOccurrences(of: "rate_hz = 50", with: "rate_hz = 0")
        XCTAssertGreaterThanOrEqual(errors(text).count, 2)
    }

    func testReference_listsEveryKey() {
        let md = ConfigReference.markdown()
        for k in ConfigKey.all { XCTAssertTrue(md.contains("`\(k.key)`"), k.key) }
    }
}
