// VNet for the function app (outbound integration) and the Azure ML clusters, with their NSGs.
// The aml subnet's NSG follows Azure ML's current VNet guidance for compute clusters
// (https://learn.microsoft.com/azure/machine-learning/how-to-secure-training-vnet,
//  https://learn.microsoft.com/azure/machine-learning/how-to-access-azureml-behind-firewall):
//   no public IP on the nodes (the default): no inbound rule from outside the VNet at all;
//   with nodePublicIp: inbound TCP 44224 from AzureMachineLearning;
//   with batchNodeManagementInbound: the seed's inbound TCP 29876-29877 from BatchNodeManagement
//     (older guidance, off by default);
//   everything between the cluster nodes inside the subnet (Ray: GCS 6379, dashboard 8265,
//     client 10001, object manager and worker ports 10002-19999 and ephemeral ports);
//   outbound to AzureMachineLearning on TCP 443/8787/18881 and UDP 5831, to
//     BatchNodeManagement.<region> on any protocol, port 443, and TCP 443 to the other service
//     tags the nodes use; the rest of the Internet denied both ways.
// Outbound leaves both subnets through one NAT gateway: nodes without a public IP get no default
// outbound access (https://learn.microsoft.com/azure/virtual-network/ip-services/default-outbound-access),
// and the function app's webhooks leave from one static IP.
// shared/adapters/compute/azureml/nsg.py checks the same rules before each submit;
// tests/azure/test_deployment_files.py evaluates these rules with it.

@description('Azure region.')
param location string

@description('Name of the virtual network.')
param vnetName string

@description('Address space of the virtual network.')
param addressPrefix string = '10.20.0.0/16'

@description('Subnet for the function app\'s VNet integration (Flex Consumption: delegated to Microsoft.App/environments).')
param functionsSubnetPrefix string = '10.20.0.0/24'

@description('Subnet for the Azure ML head and worker clusters.')
param amlSubnetPrefix string = '10.20.1.0/24'

@description('The clusters\' nodes have public IPs (enableNodePublicIp): Azure ML then reaches them inbound on TCP 44224.')
param nodePublicIp bool = false

@description('Also open the seed\'s inbound TCP 29876-29877 from BatchNodeManagement (older Azure ML guidance).')
param batchNodeManagementInbound bool = false

@description('Tags for every resource.')
param tags object = {}

// Inbound rules for clusters with public IPs / the seed's rule; used only when asked for.
var amlInboundPublicIp = [
  {
    name: 'AllowAzureMachineLearningInbound'
    properties: {
      description: 'Azure ML service to clusters with a public IP'
      priority: 110
      direction: 'Inbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: 'AzureMachineLearning'
      sourcePortRange: '*'
      destinationAddressPrefix: amlSubnetPrefix
      destinationPortRange: '44224'
    }
  }
]

var amlInboundBatch = [
  {
    name: 'AllowBatchNodeManagementInbound'
    properties: {
      description: 'The seed\'s Azure ML node agent rule (older guidance)'
      priority: 100
      direction: 'Inbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: 'BatchNodeManagement'
      sourcePortRange: '*'
      destinationAddressPrefix: amlSubnetPrefix
      destinationPortRange: '29876-29877'
    }
  }
]

// Outbound TCP 443 from the nodes, in priority order (200, 201, ...); AzureMachineLearning and
// BatchNodeManagement, which need more than TCP 443, have their own rules in amlRules.
var amlOutboundTags = [
  'Storage.${location}'
  'AzureActiveDirectory'
  'AzureResourceManager'
  'MicrosoftContainerRegistry.${location}'
  'AzureFrontDoor.FirstParty'
  'AzureContainerRegistry.${location}'
  'AzureKeyVault.${location}'
  'AzureMonitor'
]

var amlOutbound443 = [for (tag, i) in amlOutboundTags: {
  name: 'Allow${tag == 'AzureFrontDoor.FirstParty' ? 'AzureFrontDoorFirstParty' : split(tag, '.')[0]}'
  properties: {
    description: 'Cluster nodes to ${tag} (Azure ML VNet guidance)'
    priority: 200 + i
    direction: 'Outbound'
    access: 'Allow'
    protocol: 'Tcp'
    sourceAddressPrefix: amlSubnetPrefix
    sourcePortRange: '*'
    destinationAddressPrefix: tag
    destinationPortRange: '443'
  }
}]

var amlRules = [
  {
    name: 'AllowRayWithinSubnet'
    properties: {
      description: 'Ray head and workers talk on many ports (GCS, object manager, workers)'
      priority: 120
      direction: 'Inbound'
      access: 'Allow'
      protocol: '*'
      sourceAddressPrefix: amlSubnetPrefix
      sourcePortRange: '*'
      destinationAddressPrefix: amlSubnetPrefix
      destinationPortRange: '*'
    }
  }
  {
    name: 'DenyInternetInbound'
    properties: {
      description: 'Nothing else from the Internet'
      priority: 4000
      direction: 'Inbound'
      access: 'Deny'
      protocol: '*'
      sourceAddressPrefix: 'Internet'
      sourcePortRange: '*'
      destinationAddressPrefix: '*'
      destinationPortRange: '*'
    }
  }
  {
    name: 'AllowAzureMachineLearning'
    properties: {
      description: 'Azure ML service (TCP 443, 8787, 18881; Azure ML VNet guidance)'
      priority: 197
      direction: 'Outbound'
      access: 'Allow'
      protocol: 'Tcp'
      sourceAddressPrefix: amlSubnetPrefix
      sourcePortRange: '*'
      destinationAddressPrefix: 'AzureMachineLearning'
      destinationPortRanges: [
        '443'
        '8787'
        '18881'
      ]
    }
  }
  {
    name: 'AllowBatchNodeManagement'
    properties: {
      description: 'Azure Batch, which runs the cluster nodes (any protocol, port 443; Azure ML VNet guidance)'
      priority: 198
      direction: 'Outbound'
      access: 'Allow'
      protocol: '*'
      sourceAddressPrefix: amlSubnetPrefix
      sourcePortRange: '*'
      destinationAddressPrefix: 'BatchNodeManagement.${location}'
      destinationPortRange: '443'
    }
  }
  {
    name: 'AllowAzureMachineLearningUdp'
    properties: {
      description: 'Azure ML compute management (UDP 5831)'
      priority: 199
      direction: 'Outbound'
      access: 'Allow'
      protocol: 'Udp'
      sourceAddressPrefix: amlSubnetPrefix
      sourcePortRange: '*'
      destinationAddressPrefix: 'AzureMachineLearning'
      destinationPortRange: '5831'
    }
  }
  {
    name: 'DenyInternetOutbound'
    properties: {
      description: 'Nothing else to the Internet'
      priority: 4000
      direction: 'Outbound'
      access: 'Deny'
      protocol: '*'
      sourceAddressPrefix: '*'
      sourcePortRange: '*'
      destinationAddressPrefix: 'Internet'
      destinationPortRange: '*'
    }
  }
]

resource amlNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${vnetName}-aml-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: concat(amlRules, amlOutbound443, nodePublicIp ? amlInboundPublicIp : [], batchNodeManagementInbound ? amlInboundBatch : [])
  }
}

// Outbound for the clusters and the function app: without node public IPs the aml subnet needs an
// explicit egress, and the functions subnet gets the same instead of default outbound access.
resource natIp 'Microsoft.Network/publicIPAddresses@2023-11-01' = {
  name: '${vnetName}-aml-nat-ip'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
  }
}

resource natGateway 'Microsoft.Network/natGateways@2023-11-01' = {
  name: '${vnetName}-aml-nat'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 4
    publicIpAddresses: [
      {
        id: natIp.id
      }
    ]
  }
}

resource functionsNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${vnetName}-functions-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'DenyInternetInbound'
        properties: {
          description: 'The integration subnet only carries the app\'s outbound traffic'
          priority: 4000
          direction: 'Inbound'
          access: 'Deny'
          protocol: '*'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '*'
        }
      }
    ]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'functions'
        properties: {
          addressPrefix: functionsSubnetPrefix
          // The app's outbound traffic (webhooks, Teams, Azure's public endpoints) leaves through the
          // NAT gateway, one static IP receivers can allow, not through default outbound access,
          // which Azure is retiring (https://learn.microsoft.com/azure/virtual-network/ip-services/default-outbound-access;
          // https://learn.microsoft.com/azure/azure-functions/functions-networking-options#outbound-ip-restrictions).
          defaultOutboundAccess: false
          natGateway: {
            id: natGateway.id
          }
          networkSecurityGroup: {
            id: functionsNsg.id
          }
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
          serviceEndpoints: [
            {
              service: 'Microsoft.Storage'
            }
            {
              service: 'Microsoft.KeyVault'
            }
          ]
        }
      }
      {
        name: 'aml'
        properties: {
          addressPrefix: amlSubnetPrefix
          defaultOutboundAccess: false
          networkSecurityGroup: {
            id: amlNsg.id
          }
          natGateway: {
            id: natGateway.id
          }
          serviceEndpoints: [
            {
              service: 'Microsoft.Storage'
            }
            {
              service: 'Microsoft.KeyVault'
            }
          ]
        }
      }
    ]
  }
}

output vnetName string = vnet.name
output functionsSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'functions')
output amlSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, 'aml')
output amlNsgName string = amlNsg.name
output vnetId string = vnet.id
