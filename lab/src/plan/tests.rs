use std::net::Ipv4Addr;

use super::*;
use crate::topology::Topology;

fn plan(yaml: &str) -> Plan {
    let t = Topology::parse("t.yaml", yaml).unwrap();
    Plan::new(&"t1".parse().unwrap(), &t)
}

const TWO_BY_TWO: &str = r#"
nodes: [{name: node-1}, {name: node-2}]
namespaces: [{name: default}, {name: other}]
pods:
  - {name: a, node: node-1, labels: {app: echo}, command: [weft, lab, app, echo]}
  - {name: b, node: node-2, labels: {app: echo}}
  - {name: c, node: node-1}
  - {name: d, node: node-2, namespace: other, labels: {app: echo}, command: [sleep, "1"]}
services:
  - {name: fixed, selector: {app: echo}, ports: [{port: 80, targetPort: 8080}, {port: 7000}], clusterIP: 198.19.0.10}
  - {name: auto, selector: {app: echo}, ports: [{port: 9}]}
"#;

#[test]
fn nodes_get_an_underlay_address_and_a_pod_range_by_index() {
    let p = plan(TWO_BY_TWO);
    assert_eq!(p.nodes[0].underlay_ip, Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(p.nodes[1].underlay_ip, Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(p.nodes[1].pod_cidr.to_string(), "198.18.2.0/24");
    assert_eq!(p.nodes[1].gateway, Ipv4Addr::new(198, 18, 2, 1));
}

#[test]
fn pods_are_numbered_per_node_from_dot_two() {
    let p = plan(TWO_BY_TWO);
    let ips: Vec<String> = p.pods.iter().map(|p| p.ip.to_string()).collect();
    assert_eq!(
        ips,
        ["198.18.1.2", "198.18.2.2", "198.18.1.3", "198.18.2.3"]
    );
}

#[test]
fn every_name_carries_the_lab_name() {
    let p = plan(TWO_BY_TWO);
    assert_eq!(p.underlay_netns, "weft-t1-underlay");
    assert_eq!(p.nodes[0].netns, "weft-t1-node-node-1");
    assert_eq!(p.pods[3].netns, "weft-t1-pod-other_d");
    assert_eq!(p.pods[3].cgroup, PathBuf::from("node-2/other_d"));
}

#[test]
fn explicit_cluster_ips_are_kept_and_the_others_skip_them() {
    let p = plan(TWO_BY_TWO);
    assert_eq!(p.services[0].cluster_ip, Ipv4Addr::new(198, 19, 0, 10));
    assert_eq!(p.services[1].cluster_ip, Ipv4Addr::new(198, 19, 0, 11));
}

#[test]
fn only_pods_with_a_command_wait_for_the_target_ports_of_their_services() {
    let p = plan(TWO_BY_TWO);
    assert_eq!(p.pods[0].ready_ports, [9, 7000, 8080]);
    assert!(
        p.pods[1].ready_ports.is_empty(),
        "no command, nothing to wait for"
    );
    assert!(
        p.pods[3].ready_ports.is_empty(),
        "selected by nothing in its namespace"
    );
}

#[test]
fn endpoints_list_the_selected_pods_with_their_addresses() {
    let p = plan(TWO_BY_TWO);
    let eps: Vec<&str> = p.services[0]
        .endpoints
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(eps, ["default/a", "default/b"]);
}

#[test]
fn pods_are_found_by_key_or_by_a_unique_bare_name() {
    let p = plan(TWO_BY_TWO);
    assert_eq!(p.find_pod("other/d").unwrap().name, "d");
    assert_eq!(p.find_pod("c").unwrap().namespace, "default");
    assert!(p.find_pod("nope").unwrap_err().contains("no pod `nope`"));
}

#[test]
fn lab_names_are_short_lowercase_alphanumerics() {
    assert!("demo".parse::<LabName>().is_ok());
    assert!("my-lab".parse::<LabName>().unwrap_err().contains("'-'"));
    assert!("".parse::<LabName>().is_err());
    assert!("abcdefghijklm".parse::<LabName>().is_err());
}

#[test]
fn cidr_containment_and_display() {
    assert!(SERVICE_RANGE.contains(Ipv4Addr::new(198, 19, 255, 1)));
    assert!(!SERVICE_RANGE.contains(Ipv4Addr::new(198, 18, 0, 1)));
    assert_eq!(
        Cidr::new(Ipv4Addr::new(10, 1, 2, 3), 8).to_string(),
        "10.0.0.0/8"
    );
}

#[test]
fn a_changed_topology_keeps_existing_pods_where_they_are_and_fills_gaps() {
    let before = plan(TWO_BY_TWO);
    // Remove `a` (node-1, .2): `c` must stay at .3.
    let without_a = TWO_BY_TWO.replace(
        "  - {name: a, node: node-1, labels: {app: echo}, command: [weft, lab, app, echo]}\n",
        "",
    );
    let t = Topology::parse("t.yaml", &without_a).unwrap();
    let after = Plan::keeping(&"t1".parse().unwrap(), &t, Some(&before));
    let c = after.find_pod("default/c").unwrap();
    assert_eq!(c.ip, Ipv4Addr::new(198, 18, 1, 3));
    assert_eq!(c.host_veth, before.find_pod("default/c").unwrap().host_veth);
    // A new pod on node-1 takes the freed .2 and the freed veth name.
    let (pods, services) = without_a.split_once("services:").unwrap();
    let with_e = format!("{pods}  - {{name: e, node: node-1}}\nservices:{services}");
    let t = Topology::parse("t.yaml", &with_e).unwrap();
    let grown = Plan::keeping(&"t1".parse().unwrap(), &t, Some(&after));
    let e = grown.find_pod("default/e").unwrap();
    assert_eq!(e.ip, Ipv4Addr::new(198, 18, 1, 2));
    assert_eq!(e.host_veth, "wp0");
}
