//! Chains: regular chains (jump targets) and base chains attached to a netfilter hook.

use netlink_packet_netfilter::nftables::{
    ChainAttribute, Hook as NlHook, HookNumber, InetHookNumber,
};
use serde::{Deserialize, Serialize};

use super::table::Table;

/// The netfilter hook a base chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Before routing (`prerouting`): where destination NAT happens.
    Prerouting,
    /// Packets for the host itself (`input`).
    Input,
    /// Routed packets (`forward`).
    Forward,
    /// Packets the host sends (`output`).
    Output,
    /// After routing (`postrouting`): where source NAT happens.
    Postrouting,
}

impl Hook {
    fn number(self) -> InetHookNumber {
        match self {
            Self::Prerouting => InetHookNumber::PreRouting,
            Self::Input => InetHookNumber::LocalIn,
            Self::Forward => InetHookNumber::Forward,
            Self::Output => InetHookNumber::LocalOut,
            Self::Postrouting => InetHookNumber::PostRouting,
        }
    }

    fn from_number(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Prerouting,
            1 => Self::Input,
            2 => Self::Forward,
            3 => Self::Output,
            4 => Self::Postrouting,
            _ => return None,
        })
    }
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainType {
    /// Filtering (`filter`).
    Filter,
    /// Network address translation (`nat`); sees the first packet of each connection only.
    Nat,
    /// Rerouting after a mark/address change (`route`, output hook only).
    Route,
}

impl ChainType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Nat => "nat",
            Self::Route => "route",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "filter" => Self::Filter,
            "nat" => Self::Nat,
            "route" => Self::Route,
            _ => return None,
        })
    }
}

/// What a base chain does with a packet no rule decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Let it through (the default).
    #[default]
    Accept,
    /// Drop it.
    Drop,
}

/// The standard priorities `nft` names (`priority srcnat`); lower runs first.
pub mod priority {
    /// `raw`
    pub const RAW: i32 = -300;
    /// `mangle`
    pub const MANGLE: i32 = -150;
    /// `dstnat` (prerouting NAT)
    pub const DSTNAT: i32 = -100;
    /// `filter`
    pub const FILTER: i32 = 0;
    /// `security`
    pub const SECURITY: i32 = 50;
    /// `srcnat` (postrouting NAT)
    pub const SRCNAT: i32 = 100;
}

/// How a base chain is attached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BaseChain {
    /// The hook.
    pub hook: Hook,
    /// The chain type.
    #[serde(rename = "type")]
    pub chain_type: ChainType,
    /// Priority among chains on the same hook (see [`priority`]).
    pub priority: i32,
    /// Default verdict.
    pub policy: Policy,
}

/// A chain of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chain {
    /// The table it is in.
    pub table: Table,
    /// Its name.
    pub name: String,
    /// Hook attachment; `None` for a regular chain (reached by jump/goto only).
    pub base: Option<BaseChain>,
}

impl Chain {
    /// A regular chain, reached by `jump`/`goto` only.
    pub fn regular(table: &Table, name: impl Into<String>) -> Self {
        Self {
            table: table.clone(),
            name: name.into(),
            base: None,
        }
    }

    /// A base chain: `chain NAME { type TYPE hook HOOK priority PRIORITY; policy accept; }`.
    pub fn base(
        table: &Table,
        name: impl Into<String>,
        hook: Hook,
        chain_type: ChainType,
        priority: i32,
    ) -> Self {
        Self {
            table: table.clone(),
            name: name.into(),
            base: Some(BaseChain {
                hook,
                chain_type,
                priority,
                policy: Policy::Accept,
            }),
        }
    }

    /// Sets the policy of a base chain (no effect on a regular chain).
    pub fn policy(mut self, policy: Policy) -> Self {
        if let Some(base) = &mut self.base {
            base.policy = policy;
        }
        self
    }

    pub(crate) fn to_attrs(&self) -> Vec<ChainAttribute> {
        let mut attrs = vec![
            ChainAttribute::Table(self.table.name.clone()),
            ChainAttribute::Name(self.name.clone()),
        ];
        if let Some(base) = &self.base {
            attrs.push(ChainAttribute::Hook(vec![
                NlHook::Number(HookNumber::Inet(base.hook.number())),
                NlHook::Priority(base.priority as u32),
            ]));
            attrs.push(ChainAttribute::Policy(match base.policy {
                Policy::Accept => 1,
                Policy::Drop => 0,
            }));
            attrs.push(ChainAttribute::Type(base.chain_type.as_str().to_owned()));
        }
        attrs
    }

    /// Rebuilds a chain from a listing; `None` for chains of tables not asked about or of
    /// shapes wharf does not create (netdev device hooks).
    pub(crate) fn from_attrs(table: &Table, attrs: &[ChainAttribute]) -> Option<Self> {
        let (mut tname, mut name, mut hook, mut prio, mut policy, mut ty) =
            (None, None, None, None, Policy::Accept, None);
        for a in attrs {
            match a {
                ChainAttribute::Table(t) => tname = Some(t.as_str()),
                ChainAttribute::Name(n) => name = Some(n.clone()),
                ChainAttribute::Hook(h) => {
                    for h in h {
                        match h {
                            NlHook::Number(n) => hook = Hook::from_number(u32::from(*n)),
                            NlHook::Priority(p) => prio = Some(*p as i32),
                            _ => {}
                        }
                    }
                }
                ChainAttribute::Policy(0) => policy = Policy::Drop,
                ChainAttribute::Type(t) => ty = ChainType::parse(t),
                _ => {}
            }
        }
        if tname? != table.name {
            return None;
        }
        let base = match (hook, ty) {
            (Some(hook), Some(chain_type)) => Some(BaseChain {
                hook,
                chain_type,
                priority: prio.unwrap_or(0),
                policy,
            }),
            _ => None,
        };
        Some(Self {
            table: table.clone(),
            name: name?,
            base,
        })
    }
}

impl std::fmt::Display for Chain {
    /// `chain "forward" of table inet "wharf"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chain {:?} of {}", self.name, self.table)
    }
}
